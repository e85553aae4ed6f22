"""transformers' own common model tests (``ModelTesterMixin``, ``ConfigTester``) run on the SOP models.

The mixins are not in the transformers wheel. The sdist of the installed version ships ``tests/test_modeling_common.py``
and ``tests/test_configuration_common.py`` but not three helpers they import (``tests/exporters/test_export.py``,
``tests/generation/test_utils.py``, ``tests/utils/test_configuration_utils.py``), so the extraction below copies the
two files into a package ``hf_common_tests`` and writes small stand-ins for the helpers (no export or generation
mixin tests; ``torch.export`` is covered by tests/test_modeling_heads.py). Extract outside git, then run the marked
tests (excluded from the default run; ``parameterized`` must be installed; selected without the extracted files, the
module fails with one test naming what is missing instead of skipping)::

    pip download "transformers==$(python -c 'import transformers; print(transformers.__version__)')" \
        --no-deps --no-binary :all: -d /tmp/tfsdist
    python tests/test_hf_common.py --extract /tmp/tfsdist/transformers-*.tar.gz /tmp/hf_common
    SOP_HF_COMMON_TESTS=/tmp/hf_common python -m pytest -m hf_common tests/test_hf_common.py

The model tester follows transformers' ViT tester (tiny sizes, ``prepare_config_and_inputs_for_common``).
"""

import argparse
import importlib
import importlib.util
import os
import sys
import tarfile
import unittest
from pathlib import Path

import pytest

pytestmark = pytest.mark.hf_common

PACKAGE = "hf_common_tests"
COPIED = ("test_modeling_common.py", "test_configuration_common.py")
STAND_INS = {
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    # Non-default values of common PreTrainedConfig arguments, for ConfigTester.check_config_arguments_init.
    "utils/test_configuration_utils.py": (
        "config_common_kwargs = {\n"
        '    "return_dict": False, "output_hidden_states": True, "dtype": "float16", "chunk_size_feed_forward": 5,\n'
        '    "architectures": ["BertModel"], "id2label": {0: "label"}, "label2id": {"label": "0"},\n'
        '    "problem_type": "regression",\n'
        "}\n"
    ),
}


def extract(sdist: str, target: str) -> Path:
    """Copy the common test files of a transformers sdist into ``target/hf_common_tests`` (plus stand-ins)."""
    package = Path(target) / PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            parts = Path(member.name).parts
            if len(parts) == 3 and parts[1] == "tests" and parts[2] in COPIED:
                (package / parts[2]).write_bytes(archive.extractfile(member).read())
    missing = [name for name in COPIED if not (package / name).exists()]
    if missing:
        raise SystemExit(f"{sdist} has no tests/{', tests/'.join(missing)}")
    (package / "__init__.py").write_text("")
    for name, text in STAND_INS.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).parent.joinpath("__init__.py").write_text("")
        (package / name).write_text(text)
    return package


def _load_common():
    """transformers' ``test_modeling_common`` and ``test_configuration_common`` modules, or (None, None, why not)."""
    root = os.environ.get("SOP_HF_COMMON_TESTS")
    if not root:
        return None, None, "SOP_HF_COMMON_TESTS is not set"
    if not (Path(root) / PACKAGE / "test_modeling_common.py").exists():
        return None, None, f"SOP_HF_COMMON_TESTS={root} holds no {PACKAGE}/test_modeling_common.py"
    if importlib.util.find_spec("parameterized") is None:
        return None, None, "transformers' common tests need `parameterized` (pip install -e '.[dev]')"
    sys.path.insert(0, root)
    try:
        modeling = importlib.import_module(f"{PACKAGE}.test_modeling_common")
        configuration = importlib.import_module(f"{PACKAGE}.test_configuration_common")
    finally:
        sys.path.remove(root)
    return modeling, configuration, ""


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extract", nargs=2, metavar=("SDIST", "TARGET"), required=True)
    args = parser.parse_args()
    print(extract(*args.extract))
    raise SystemExit(0)

modeling_common, configuration_common, UNAVAILABLE = _load_common()

if modeling_common is None:
    # The installed transformers wheel has no ModelTesterMixin / ConfigTester. Selected with -m hf_common, the run
    # must not pass as a silent skip: this test fails with what to do (the default run deselects it with the others).

    def test_transformers_common_tests_are_available():
        pytest.fail(
            f"transformers' common model tests cannot be imported: {UNAVAILABLE}. Extract them from the sdist of the "
            "installed transformers and point SOP_HF_COMMON_TESTS at the folder (see the docstring of "
            "tests/test_hf_common.py).",
            pytrace=False,
        )

else:
    import torch

    from sop_hf import SOPBackbone, SOPConfig, SOPForImageClassification, SOPModel

    floats_tensor, ids_tensor = modeling_common.floats_tensor, modeling_common.ids_tensor

    class SOPModelTester:
        """Tiny sizes and inputs, in the shape of transformers' ViTModelTester."""

        def __init__(self, parent, batch_size=13, image_size=32, patch_size=8, num_channels=3, hidden_size=32,
                     num_hidden_layers=2, num_attention_heads=4, type_sequence_label_size=10):  # fmt: skip
            self.parent = parent
            self.batch_size, self.image_size, self.patch_size = batch_size, image_size, patch_size
            self.num_channels, self.hidden_size = num_channels, hidden_size
            self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
            self.type_sequence_label_size = type_sequence_label_size
            self.is_training = True
            self.seq_length = (image_size // patch_size) ** 2 + 1  # [CLS] + patches
            self.mask_length = (image_size // patch_size) ** 2  # bool_masked_pos covers the patches only
            self.num_masks = self.mask_length // 2

        def get_config(self) -> SOPConfig:
            return SOPConfig(
                image_size=self.image_size, patch_size=self.patch_size, num_channels=self.num_channels,
                hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
                num_attention_heads=self.num_attention_heads, intermediate_size=37, drop_path_rate=0.0,
                use_mask_token=True, mim_loss_weight=0.0, num_labels=self.type_sequence_label_size,
                class_memory_size=64, num_anchors=8, num_support=3, patch_memory_size=32, num_patch_anchors=6,
            )  # fmt: skip

        def prepare_config_and_inputs(self):
            pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
            labels = ids_tensor([self.batch_size], self.type_sequence_label_size)
            return self.get_config(), pixel_values, labels

        def prepare_config_and_inputs_for_common(self):
            config, pixel_values, _ = self.prepare_config_and_inputs()
            return config, {"pixel_values": pixel_values}

    class SOPModelCommonTest(modeling_common.ModelTesterMixin, unittest.TestCase):
        all_model_classes = (SOPModel, SOPForImageClassification, SOPBackbone)
        test_resize_embeddings = False
        has_attentions = True

        def setUp(self):
            self.model_tester = SOPModelTester(self)
            self.config_tester = configuration_common.ConfigTester(
                self, config_class=SOPConfig, has_text_modality=False, hidden_size=48, num_attention_heads=4
            )

        def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
            # transformers gives labels to the classes of its in-tree task mappings; ours are registered at runtime.
            inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
            if return_labels and model_class is SOPForImageClassification:
                inputs_dict["labels"] = torch.zeros(self.model_tester.batch_size, dtype=torch.long)
            return inputs_dict

        def _only_the_classifier(self, test):
            # The mixin skips base models and backbones by its in-tree mappings; only the classifier has a loss.
            self.all_model_classes = (SOPForImageClassification,)
            test()

        def test_training(self):
            self._only_the_classifier(super().test_training)

        def test_training_gradient_checkpointing(self):
            self._only_the_classifier(super().test_training_gradient_checkpointing)

        def test_training_gradient_checkpointing_use_reentrant_false(self):
            self._only_the_classifier(super().test_training_gradient_checkpointing_use_reentrant_false)

        def test_training_gradient_checkpointing_use_reentrant_true(self):
            self._only_the_classifier(super().test_training_gradient_checkpointing_use_reentrant_true)

        def test_model_get_set_embeddings(self):
            # Vision models expose the patch projection (as transformers' ViT test checks), not an nn.Embedding.
            config, _ = self.model_tester.prepare_config_and_inputs_for_common()
            for model_class in self.all_model_classes:
                self.assertIsInstance(model_class(config).get_input_embeddings(), torch.nn.Conv2d)

        def test_config(self):
            self.config_tester.run_common_tests()

        def test_model_shapes(self):
            config, pixel_values, labels = self.model_tester.prepare_config_and_inputs()
            model = SOPForImageClassification(config).eval()
            with torch.no_grad():
                out = model(pixel_values, labels=labels)
            expected = (self.model_tester.batch_size, self.model_tester.type_sequence_label_size)
            self.assertEqual(out.logits.shape, expected)
