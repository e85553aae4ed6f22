"""Tests of ``sop_hf.hub``: the model card, the export folder and pushes to / pulls from a fake Hub.

Hub round trips run their clients in subprocesses (huggingface_hub reads ``HF_ENDPOINT`` at import) against the
stdlib server of ``tests/fake_hub.py``, with a temporary ``HF_HOME``; nothing touches ``~/.cache/huggingface``.
"""

import json
import os
import re
import textwrap
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import EvalResult, ModelCard
from PIL import Image
from safetensors import safe_open

from sop_hf import SOPForPreTraining, SOPImageProcessor, SOPModel
from sop_hf.hub import NOT_RECORDED, build_model_card, count_parameters, push_encoder_to_hub, save_encoder
from tests.conftest import WITHOUT_SOP_HF, tiny_config
from tests.fake_hub import FAKE_TOKEN, FakeHub, running_fake_hub

HOME_CACHE = Path.home() / ".cache" / "huggingface"
RESULTS = [
    {"dataset_name": "fashion_mnist", "dataset_split": "test", "metric_type": "accuracy", "metric_value": 0.8125,
     "metric_name": "k-NN top-1 (k=20)"},
    EvalResult(task_type="image-classification", dataset_type="fashion_mnist", dataset_name="fashion_mnist",
               metric_type="accuracy", metric_value=0.84, metric_name="linear probe top-1"),
]  # fmt: skip


def encoder_config():
    """The config of an exported encoder: no mask token, SOP-MIM off (as ``export_encoder`` writes it)."""
    return tiny_config(use_mask_token=False, mim_loss_weight=0.0)


def front_matter(card: ModelCard) -> dict:
    return card.data.to_dict()


@pytest.fixture(scope="module")
def fake_hub() -> Iterator[FakeHub]:
    """One fake Hub for this module's round trips (each test uses its own repository names)."""
    with running_fake_hub() as hub:
        yield hub


def server_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fake-hub" or "process_request" in t.name]


@pytest.fixture(scope="module", autouse=True)
def _no_leftovers():
    """After the module (and the fake_hub fixture): ~/.cache/huggingface unchanged, no server thread alive."""

    def state():
        return sorted((str(p), p.stat().st_mtime_ns) for p in HOME_CACHE.rglob("*")) if HOME_CACHE.exists() else None

    before = state()
    yield
    assert state() == before, f"{HOME_CACHE} was modified"
    assert server_threads() == []


# ---------------------------------------------------------------- model card


def test_build_model_card__front_matter():
    card = build_model_card(encoder_config(), repo_id="me/sop-tiny", base_model="me/sop-base")
    meta = front_matter(card)
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "image-feature-extraction"
    assert meta["license"] == "apache-2.0"
    assert meta["base_model"] == "me/sop-base"
    assert meta["tags"] == ["sop_hf", "self-supervised-learning", "vision", "image-feature-extraction", "sop"]
    assert "model-index" not in meta and "model_name" not in meta
    assert str(card).startswith("---\n")


def test_build_model_card__placeholders_without_training():
    text = str(build_model_card(encoder_config()))
    recipe = text.split("## Training recipe")[1].split("\n## ")[0]
    assert "No training information was recorded" in recipe
    rows = [line for line in recipe.splitlines() if line.startswith("| ") and "Setting" not in line]
    assert rows and all(line.endswith(f"| {NOT_RECORDED} |") for line in rows)  # nothing invented from defaults
    assert "No evaluation recorded yet" in text and "--update-card" in text
    assert 'AutoModel.from_pretrained("<repo_id>", trust_remote_code=True)' in text
    assert 'pipeline("image-feature-extraction", model="<repo_id>", trust_remote_code=True)' in text
    assert "import sop_hf" in text


def test_build_model_card__training_recipe_values():
    training = {"dataset": "fashion_mnist", "num_train_epochs": 30, "per_device_train_batch_size": 64,
                "world_size": 2, "learning_rate": 5e-4, "teacher_temp": 0.07, "num_anchors": 16, "seed": 7}  # fmt: skip
    card = build_model_card(encoder_config(), training=training)
    text = str(card)
    assert front_matter(card)["datasets"] == ["fashion_mnist"]
    for row in ("| Dataset | fashion_mnist |", "| Epochs | 30 |", "| Global batch size | 128 |",
                "| Peak learning rate | 0.0005 |", "| Teacher temperature | 0.07 |", "| Anchors per task P | 16 |",
                "| Class memory size K | 64 |", "| Support embeddings per prototype E | 3 |",
                "| Tasks per step T | 2 |", f"| Student temperature | {NOT_RECORDED} |",
                f"| SOP-MIM loss weight | {NOT_RECORDED} |", "| `seed` | 7 |"):  # fmt: skip
        assert row in text, row


def test_build_model_card__architecture_table_and_parameter_count():
    config = encoder_config()
    expected = sum(p.numel() for p in SOPModel(config).parameters())
    assert count_parameters(config) == expected
    text = str(build_model_card(config))
    for row in ("| Image size | 32 px", "| Patch size | 8 px |", "| Width | 32 |", "| Depth | 2 |",
                "| Attention heads | 2 |", f"({expected:,}) |"):  # fmt: skip
        assert row in text, row


def test_build_model_card__eval_results_become_model_index(tmp_path):
    card = build_model_card(encoder_config(), repo_id="me/sop-tiny", eval_results=RESULTS)
    (model_index,) = front_matter(card)["model-index"]
    assert model_index["name"] == "me/sop-tiny"
    knn, linear = model_index["results"]
    assert knn["task"]["type"] == "image-classification"
    assert knn["dataset"] == {"name": "fashion_mnist", "type": "fashion_mnist", "split": "test"}
    assert knn["metrics"] == [{"type": "accuracy", "value": 0.8125, "name": "k-NN top-1 (k=20)"}]
    assert linear["metrics"][0]["name"] == "linear probe top-1"
    assert "| image-classification | fashion_mnist | test | k-NN top-1 (k=20) | 0.8125 |" in str(card)
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    assert [(r.dataset_name, r.metric_value, r.metric_name) for r in loaded.data.eval_results] == [
        ("fashion_mnist", 0.8125, "k-NN top-1 (k=20)"),
        ("fashion_mnist", 0.84, "linear probe top-1"),
    ]
    assert loaded.data.library_name == "transformers" and loaded.text == card.text


@pytest.mark.parametrize(("method", "arxiv"), [("massl", "2407.17486"), ("carp", "2310.12692"), ("carl", "2112.15421")])
def test_build_model_card__lineage_methods_cite_their_paper(method, arxiv):
    card = build_model_card(encoder_config(), method=method)
    text = str(card)
    assert method in front_matter(card)["tags"]
    assert text.count("```bibtex") == 2 and "2505.21533" in text and arxiv in text


def test_build_model_card__sop_cites_only_sop():
    text = str(build_model_card(encoder_config()))
    assert text.count("```bibtex") == 1 and "Self-Organizing Visual Prototypes" in text
    assert all(arxiv not in text for arxiv in ("2407.17486", "2310.12692", "2112.15421"))


def test_build_model_card__names_sop_mim_only_when_the_patch_loss_was_on():
    mim = str(build_model_card(encoder_config(), training={"mim_loss_weight": 1.0}))
    assert mim.split("\n# ", 1)[1].startswith("SOP-MIM ViT")  # the title
    assert "pretrained with **SOP-MIM**" in mim and "trained with SOP-MIM (patch loss weight 1)" in mim
    assert "- sop-mim" in mim  # a tag the Hub can filter on
    plain = str(build_model_card(encoder_config(), training={"mim_loss_weight": 0.0}))
    assert plain.split("\n# ", 1)[1].startswith("SOP ViT") and "pretrained with **SOP**" in plain
    assert "on by default" not in plain and "was off" in plain and "trained with SOP-MIM" not in plain
    unknown = str(build_model_card(encoder_config()))
    assert "did not record `mim_loss_weight`" in unknown and "on by default" not in unknown
    with pytest.raises(ValueError, match="method 'sop-mim' but the training record says mim_loss_weight=0"):
        build_model_card(encoder_config(), method="sop-mim", training={"mim_loss_weight": 0})


def test_build_model_card__training_curves_reference():
    text = str(build_model_card(encoder_config(), training_curves="training_curves.png"))
    assert "![Training curves](training_curves.png)" in text


def test_build_model_card__bad_arguments_raise():
    from sop_hf.methods import CARD_ALIASES, METHODS

    known = sorted([*METHODS, *CARD_ALIASES])
    with pytest.raises(ValueError, match=re.escape(f"Unknown method 'byol'; choose one of {known}")):
        build_model_card(encoder_config(), method="byol")
    with pytest.raises(ValueError, match=r"Unknown eval result keys \['accuracy'\]"):
        build_model_card(encoder_config(), eval_results=[{"dataset_name": "x", "accuracy": 0.5}])
    with pytest.raises(ValueError, match=r"is missing \['metric_value'\]"):
        build_model_card(encoder_config(), eval_results=[{"dataset_name": "x", "metric_type": "accuracy"}])


# ---------------------------------------------------------------- save_encoder


def test_save_encoder__writes_a_self_contained_folder(tmp_path):
    encoder = SOPModel(encoder_config()).eval()
    folder = save_encoder(encoder, tmp_path / "export", repo_id="me/sop-tiny", training={"dataset": "digits"})
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "configuration_sop.py",
            "modeling_sop.py", "README.md"} <= names  # fmt: skip
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_sop.SOPConfig", "AutoModel": "modeling_sop.SOPModel",
        "AutoModelForImageClassification": "modeling_sop.SOPForImageClassification",
        "AutoBackbone": "modeling_sop.SOPBackbone",
    }  # fmt: skip
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    # a stock processor: no auto_map, so pipeline() never asks to run custom code for it
    assert processor["image_processor_type"] == "BitImageProcessor" and "auto_map" not in processor
    assert processor["crop_size"] == {"height": 32, "width": 32}
    with safe_open(folder / "model.safetensors", "pt") as weights:
        keys = list(weights.keys())
    assert keys and not any("memory" in k or "head" in k or "mask_token" in k for k in keys)
    card = ModelCard.load(folder / "README.md")
    assert card.data.pipeline_tag == "image-feature-extraction" and "| Dataset | digits |" in card.text
    reloaded = SOPModel.from_pretrained(folder).eval()
    pixels = torch.randn(2, 3, 32, 32)
    assert torch.equal(reloaded(pixels).pooler_output, encoder(pixels).pooler_output)


def test_save_encoder__refuses_a_pretraining_model(tmp_path):
    model = SOPForPreTraining(tiny_config())
    with pytest.raises(
        ValueError,
        match=r"expects an SOPModel or ResNetModel encoder, got SOPForPreTraining\. Call `model\.export_encoder",
    ):
        save_encoder(model, tmp_path)
    assert not any(tmp_path.iterdir())
    save_encoder(model.export_encoder("teacher"), tmp_path / "teacher")  # the supported route
    assert (tmp_path / "teacher" / "model.safetensors").is_file()


def test_save_encoder__copies_training_curves_and_custom_processor(tmp_path):
    png = tmp_path / "curves.png"
    Image.new("RGB", (4, 4)).save(png)
    folder = save_encoder(
        SOPModel(encoder_config()), tmp_path / "out", image_processor=SOPImageProcessor(size=32, crop_pct=1.0),
        training_curves=str(png),
    )  # fmt: skip
    assert (folder / "curves.png").read_bytes() == png.read_bytes()
    assert "![Training curves](curves.png)" in (folder / "README.md").read_text()
    assert json.loads((folder / "preprocessor_config.json").read_text())["crop_pct"] == 1.0


def test_save_encoder__model_card_and_card_arguments_conflict(tmp_path):
    card = build_model_card(encoder_config())
    with pytest.raises(ValueError, match=r"Pass either model_card or card arguments, not both \(got \['method'\]\)"):
        save_encoder(SOPModel(encoder_config()), tmp_path, model_card=card, method="sop")
    save_encoder(SOPModel(encoder_config()), tmp_path, model_card="---\nlicense: mit\n---\n\n# Mine\n")
    assert ModelCard.load(tmp_path / "README.md").data.license == "mit"


# ---------------------------------------------------------------- fake Hub round trips


def test_fake_hub__endpoints_and_clean_shutdown():
    def call(url, method="GET", body=None, token=FAKE_TOKEN):
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    with running_fake_hub() as hub:
        create = json.dumps({"name": "probe", "organization": None}).encode()
        assert call(f"{hub.url}/api/repos/create", "POST", create, token="wrong")[0] == 401
        assert call(f"{hub.url}/api/repos/create", "POST", create)[0] == 200
        assert call(f"{hub.url}/api/repos/create", "POST", create)[0] == 409
        status, headers, body = call(f"{hub.url}/sop-tester/probe/resolve/main/.gitattributes", "HEAD")
        assert status == 200 and headers["X-Repo-Commit"] == hub.head("sop-tester/probe")
        assert int(headers["X-Linked-Size"]) == len(hub.files("sop-tester/probe")[".gitattributes"])
        assert call(f"{hub.url}/sop-tester/probe/resolve/main/missing.json")[1]["X-Error-Code"] == "EntryNotFound"
        assert call(f"{hub.url}/api/models/sop-tester/nope")[1]["X-Error-Code"] == "RepoNotFound"
        thread = hub.thread
    assert not thread.is_alive() and server_threads() == []


def _reference(tmp_path: Path) -> tuple[Path, Path, torch.Tensor, torch.Tensor]:
    """Save a tiny encoder and a test image; return their paths and the local eval-mode features."""
    encoder = SOPModel(encoder_config()).eval()
    encoder.save_pretrained(tmp_path / "local")
    image_path = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(image_path)
    pixels = SOPImageProcessor(size=32)(Image.open(image_path), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = encoder(pixels)
    return tmp_path / "local", image_path, out.last_hidden_state, out.pooler_output


# Runs in a fresh interpreter with sop_hf removed from sys.path, so only the repository's remote code can be used.
LOAD_SCRIPT = (
    WITHOUT_SOP_HF
    + """import torch
from huggingface_hub import hf_hub_download
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, pipeline

repo, image_path, out_path = {repo!r}, {image!r}, {out!r}
model = AutoModel.from_pretrained(repo, trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained(repo, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
assert type(processor).__name__.startswith("BitImageProcessor"), type(processor)  # stock: no custom code to run
image = Image.open(image_path)
with torch.no_grad():
    out = model(**processor(images=image, return_tensors="pt"))
extractor = pipeline("image-feature-extraction", model=repo, trust_remote_code=True)
pooled = torch.tensor(extractor(image, pool=True))
readme = open(hf_hub_download(repo, "README.md"), encoding="utf-8").read()
torch.save({{"tokens": out.last_hidden_state, "pooled": out.pooler_output, "pipeline": pooled,
            "readme": readme, "cache": os.environ["HF_HUB_CACHE"]}}, out_path)
"""
)


def _load_from_hub(hub, repo: str, image: Path, tmp_path: Path) -> dict:
    out = tmp_path / f"{repo.replace('/', '--')}.pt"
    hub.run_python(textwrap.dedent(LOAD_SCRIPT.format(repo=repo, image=str(image), out=str(out))))
    return torch.load(out)


def test_push_encoder_to_hub__pull_gives_identical_features_and_our_card(fake_hub, tmp_path):
    local, image, tokens, pooled = _reference(tmp_path)
    push = f"""
        from sop_hf import SOPModel
        from sop_hf.hub import push_encoder_to_hub
        encoder = SOPModel.from_pretrained({str(local)!r})
        url = push_encoder_to_hub(encoder, "sop-tester/sop-tiny", training={{"dataset": "fashion_mnist"}},
                                  eval_results=[{{"dataset_name": "fashion_mnist", "metric_type": "accuracy",
                                                  "metric_value": 0.8125}}])
        print("URL", url)
    """
    result = fake_hub.run_python(textwrap.dedent(push))
    assert f"URL {fake_hub.url}/sop-tester/sop-tiny/commit/{fake_hub.head('sop-tester/sop-tiny')}" in result.stdout
    pushed = fake_hub.files("sop-tester/sop-tiny")
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "modeling_sop.py", "README.md"} <= set(
        pushed
    )

    pulled = _load_from_hub(fake_hub, "sop-tester/sop-tiny", image, tmp_path)
    assert (pulled["tokens"] - tokens).abs().max().item() == 0.0
    assert (pulled["pooled"] - pooled).abs().max().item() == 0.0
    torch.testing.assert_close(pulled["pipeline"], pooled, rtol=0, atol=1e-6)
    assert pulled["cache"].startswith(str(fake_hub.root))
    card = ModelCard(pulled["readme"])
    assert pulled["readme"] == pushed["README.md"].decode()
    assert card.data.tags[0] == "sop_hf" and card.data.eval_results[0].metric_value == 0.8125
    assert 'AutoModel.from_pretrained("sop-tester/sop-tiny", trust_remote_code=True)' in card.text


def test_push_to_hub__stock_transformers_path_works_too(fake_hub, tmp_path):
    local, image, tokens, pooled = _reference(tmp_path)
    push = f"""
        from sop_hf import SOPModel
        from sop_hf.hub import default_image_processor
        model = SOPModel.from_pretrained({str(local)!r})
        model.push_to_hub("sop-tester/stock")
        default_image_processor(model.config).push_to_hub("sop-tester/stock")
    """
    fake_hub.run_python(textwrap.dedent(push))
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "modeling_sop.py"} <= set(
        fake_hub.files("sop-tester/stock")
    )
    pulled = _load_from_hub(fake_hub, "sop-tester/stock", image, tmp_path)
    assert (pulled["tokens"] - tokens).abs().max().item() == 0.0
    assert (pulled["pooled"] - pooled).abs().max().item() == 0.0
    # transformers writes its generic card: the reason push_encoder_to_hub uploads its own README.
    assert "sop_hf" not in ModelCard(pulled["readme"]).text


def test_push_encoder_to_hub__refuses_a_pretraining_model_before_creating_the_repo(monkeypatch):
    calls = []

    class NoNetworkApi:
        def __init__(self, **kwargs):
            pass

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id))
            return type("RepoUrl", (str,), {"repo_id": repo_id})(f"http://hub/{repo_id}")

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", sorted(os.listdir(kwargs["folder_path"]))))

    monkeypatch.setattr("sop_hf.hub.push.HfApi", NoNetworkApi)
    with pytest.raises(
        ValueError, match=r"push_encoder_to_hub expects an SOPModel or ResNetModel encoder, got SOPForPreTraining\."
    ):
        push_encoder_to_hub(SOPForPreTraining(tiny_config()), "me/x")
    assert calls == []
    push_encoder_to_hub(SOPModel(encoder_config()), "me/x")
    assert calls[0] == ("create_repo", "me/x") and "README.md" in calls[1][1]
