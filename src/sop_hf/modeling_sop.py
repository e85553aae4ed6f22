"""The SOP encoder as a transformers model: ``SOPPreTrainedModel`` and ``SOPModel``.

``SOPModel`` is a DINO/iBOT-style pre-norm ViT (docs/method.md §2): a [CLS] token, absolute position embeddings
bicubically interpolated to any input size whose sides are multiples of the patch size, an optional learnable mask
token that *replaces* the patch embeddings where ``bool_masked_pos`` is true, stochastic depth rising linearly over
depth and gradient checkpointing. It is what gets exported and loaded by ``AutoModel`` / the image-feature-extraction
pipeline.

transformers 5.x conventions it follows, so that a new attention backend or output option needs no code here:

- attention through transformers' attention interface: the kernel is looked up by name in
  ``ALL_ATTENTION_FUNCTIONS`` (``"sdpa"`` by default; ``"eager"``, ``"flex_attention"``, ``"flash_attention_2"``,
  kernels registered by the user) with ``eager_attention_forward`` as the explicit path;
- hidden states and attentions recorded by transformers' output capturing (``_can_record_outputs`` and
  ``capture_outputs``: hooks on ``SOPLayer`` and ``SOPAttention``), and ``can_return_tuple`` for ``return_dict``;
  extra keyword arguments (``TransformersKwargs``) flow down to the attention kernel.

This file, like its siblings, imports only torch, transformers and relative modules so that it ships as Hub remote
code. The pretraining model (student, EMA teacher, heads, banks, losses) lives in ``modeling_sop_pretraining.py``.

>>> import torch
>>> from sop_hf import SOPConfig, SOPModel
>>> config = SOPConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
>>> out = SOPModel(config)(torch.randn(2, 3, 32, 48))
>>> tuple(out.last_hidden_state.shape), tuple(out.pooler_output.shape)
((2, 25, 32), (2, 32))
"""

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BackboneOutput,
    BaseModelOutput,
    BaseModelOutputWithPooling,
    ImageClassifierOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .configuration_sop import SOPConfig

try:  # transformers >= 5 keeps the backbone helpers at the top level
    from transformers.backbone_utils import BackboneMixin
except ImportError:  # pragma: no cover - older layout
    from transformers.utils.backbone_utils import BackboneMixin


def drop_path(hidden_states: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole residual branches per sample with probability ``rate``, rescale the rest."""
    if rate == 0.0 or not training:
        return hidden_states
    keep = 1.0 - rate
    shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
    mask = hidden_states.new_empty(shape).bernoulli_(keep)
    return hidden_states * mask / keep


class SOPEmbeddings(nn.Module):
    """Patch projection, optional mask token, [CLS] token and interpolated absolute position embeddings."""

    def __init__(self, image_size: int, patch_size: int, num_channels: int, hidden_size: int, use_mask_token: bool):
        super().__init__()
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.grid_size = image_size // patch_size
        self.projection = nn.Conv2d(num_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.empty(1, 1, hidden_size))
        self.mask_token = nn.Parameter(torch.empty(1, 1, hidden_size)) if use_mask_token else None
        self.position_embeddings = nn.Parameter(torch.empty(1, self.grid_size**2 + 1, hidden_size))

    def interpolate_pos_encoding(self, grid_height: int, grid_width: int) -> torch.Tensor:
        """[1, 1 + G*G, D] learned table -> [1, 1 + h*w, D] for an h x w patch grid (bicubic, as ``ViTModel``)."""
        if grid_height == self.grid_size and grid_width == self.grid_size:
            return self.position_embeddings
        cls_pos = self.position_embeddings[:, :1]
        patch_pos = self.position_embeddings[:, 1:]
        dim = patch_pos.shape[-1]
        patch_pos = patch_pos.reshape(1, self.grid_size, self.grid_size, dim).permute(0, 3, 1, 2)
        patch_pos = nn.functional.interpolate(
            patch_pos.float(), size=(grid_height, grid_width), mode="bicubic", align_corners=False
        ).to(cls_pos.dtype)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_height * grid_width, dim)
        return torch.cat((cls_pos, patch_pos), dim=1)

    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        batch_size, num_channels, height, width = pixel_values.shape
        if num_channels != self.num_channels:
            raise ValueError(f"pixel_values has {num_channels} channels; the model expects {self.num_channels}")
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"pixel_values sides ({height}x{width}) must be multiples of patch_size ({self.patch_size})"
            )
        pixel_values = pixel_values.to(self.projection.weight.dtype)
        embeddings = self.projection(pixel_values).flatten(2).transpose(1, 2)  # [B, L, D]
        if bool_masked_pos is not None:
            if self.mask_token is None:
                raise ValueError("bool_masked_pos was given but the model has no mask token (use_mask_token=False)")
            if bool_masked_pos.shape != embeddings.shape[:2]:
                raise ValueError(
                    f"bool_masked_pos must have shape [batch, num_patches] = {list(embeddings.shape[:2])}, "
                    f"got {list(bool_masked_pos.shape)}"
                )
            mask = bool_masked_pos.unsqueeze(-1)  # [B, L, 1]
            embeddings = torch.where(mask, self.mask_token.to(embeddings.dtype), embeddings)
        cls_tokens = self.cls_token.expand(batch_size, -1, -1).to(embeddings.dtype)
        embeddings = torch.cat((cls_tokens, embeddings), dim=1)  # [B, 1 + L, D]
        pos = self.interpolate_pos_encoding(height // self.patch_size, width // self.patch_size)
        return embeddings + pos.to(embeddings.dtype)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit softmax attention with the signature of transformers' attention interface.

    query, key, value: [B, H, N, Dh]. Returns the context [B, N, H, Dh] and the probabilities [B, H, N, N]
    (softmax in float32).
    """
    scores = torch.matmul(query, key.transpose(-2, -1)) * scaling  # [B, H, N, N]
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    context = torch.matmul(weights, value).transpose(1, 2).contiguous()  # [B, N, H, Dh]
    return context, weights


class SOPAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection.

    The kernel is ``config._attn_implementation``, looked up at every call in transformers' attention registry
    (``"sdpa"`` by default, ``"eager"`` for the explicit path above, any other registered kernel; set it with
    ``attn_implementation=`` in ``from_pretrained`` or ``model.set_attn_implementation``). Attention probabilities
    exist only on the eager path, so a call asking for them (``output_attentions=True``) runs eagerly whatever the
    setting.
    """

    def __init__(self, hidden_size: int, num_heads: int, qkv_bias: bool, config: SOPConfig):
        super().__init__()
        self.config = config  # read for the attention implementation only
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=qkv_bias)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, seq_len, hidden_size = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch_size, seq_len, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, N, Dh]
        implementation = getattr(self.config, "_attn_implementation", None) or "eager"
        if kwargs.get("output_attentions"):  # probabilities exist only on the eager path
            attention = eager_attention_forward
        else:
            attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        context, weights = attention(self, query, key, value, None, scaling=self.scaling, dropout=0.0, **kwargs)
        context = context.reshape(batch_size, seq_len, hidden_size)  # [B, N, D]
        return self.proj(context), weights


class SOPMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = ACT2FN[hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class SOPLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x)))."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        hidden_act: str,
        qkv_bias: bool,
        layer_norm_eps: float,
        drop_path_rate: float,
        config: SOPConfig,
    ):
        super().__init__()
        self.drop_path_rate = drop_path_rate
        self.norm1 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.attention = SOPAttention(hidden_size, num_heads, qkv_bias, config)
        self.norm2 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.mlp = SOPMLP(hidden_size, intermediate_size, hidden_act)

    def forward(self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        attn_out, _ = self.attention(self.norm1(hidden_states), **kwargs)  # the probabilities are recorded by hooks
        hidden_states = hidden_states + drop_path(attn_out, self.drop_path_rate, self.training)
        mlp_out = self.mlp(self.norm2(hidden_states))
        hidden_states = hidden_states + drop_path(mlp_out, self.drop_path_rate, self.training)
        return hidden_states  # [B, N, D]


class SOPPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading conventions shared by ``SOPModel`` and ``SOPForPreTraining``."""

    config_class = SOPConfig
    config: SOPConfig
    base_model_prefix = "sop"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["SOPEmbeddings", "SOPLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True  # any kernel registered in ALL_ATTENTION_FUNCTIONS
    # transformers' output capturing: the input of the first block and every block's output (before the final
    # norm) are the hidden states; every attention's second output (its probabilities) the attentions.
    _can_record_outputs = {"hidden_states": SOPLayer, "attentions": SOPAttention}

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """``PreTrainedModel.from_pretrained`` that turns weight-shape mismatches into a ``ValueError`` naming them.

        Pass ``ignore_mismatched_sizes=True`` to re-initialise mismatched weights instead (transformers' behaviour).
        """
        if kwargs.get("ignore_mismatched_sizes", False):
            return super().from_pretrained(*args, **kwargs)
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, ignore_mismatched_sizes=True, output_loading_info=True, **kwargs)
        mismatched = sorted(info.get("mismatched_keys") or [])
        if mismatched:
            details = "; ".join(f"{key}: checkpoint {tuple(a)} vs model {tuple(b)}" for key, a, b in mismatched[:8])
            raise ValueError(
                f"The checkpoint's weight shapes do not match the {cls.__name__} config ({len(mismatched)} tensors): "
                f"{details}. Load it with its own config, or pass ignore_mismatched_sizes=True to re-initialise them."
            )
        return (model, info) if wants_info else model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``PreTrainedModel.save_pretrained`` whose ``auto_map`` names every remote-code class of this file.

        transformers records only the saved class; an exported encoder folder must also load as
        ``AutoModelForImageClassification`` and ``AutoBackbone`` with ``trust_remote_code=True``.
        """
        if type(self)._auto_class is not None:
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            for cls in (SOPModel, SOPForImageClassification, SOPBackbone):
                if cls._auto_class is not None:
                    auto_map[cls._auto_class] = f"{cls.__module__.split('.')[-1]}.{cls.__name__}"
            self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):  # the heads of ResNet lineage models
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, SOPEmbeddings):
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)
            init.trunc_normal_(module.cls_token, mean=0.0, std=std)
            if module.mask_token is not None:
                init.zeros_(module.mask_token)


def _build_encoder(model: nn.Module, config: SOPConfig, drop_path_rate: float, use_mask_token: bool) -> None:
    """Give ``model`` the encoder's modules (``embeddings``, ``layers``, ``layernorm``) under the state-dict names
    that ``SOPModel`` checkpoints use, so the backbone loads an exported encoder as is."""
    model.embeddings = SOPEmbeddings(
        config.image_size, config.patch_size, config.num_channels, config.hidden_size, use_mask_token
    )
    depth = config.num_hidden_layers
    rates = [drop_path_rate * i / (depth - 1) if depth > 1 else drop_path_rate for i in range(depth)]  # 0 -> rate
    model.layers = nn.ModuleList(
        SOPLayer(
            config.hidden_size,
            config.num_attention_heads,
            config.intermediate_size,
            config.hidden_act,
            config.qkv_bias,
            config.layer_norm_eps,
            rates[i],
            config,
        )
        for i in range(depth)
    )
    model.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


# Keyword arguments a forward passes down to the blocks and the attention kernel (TransformersKwargs) or reads itself.
_FORWARD_KWARGS = set(TransformersKwargs.__annotations__) | {"output_hidden_states", "output_attentions"}


def _check_kwargs(kwargs: dict, caller: str) -> None:
    # interpolate_pos_encoding: accepted for drop-in compatibility with ViTModel callers (this encoder always
    # interpolates); anything else that is no transformers keyword argument is a caller's mistake.
    kwargs.pop("interpolate_pos_encoding", None)
    unexpected = sorted(set(kwargs) - _FORWARD_KWARGS)
    if unexpected:
        raise TypeError(f"{caller}.forward got unexpected arguments: {unexpected}")


class _EncoderMixin:
    """The embeddings and blocks of ``SOPModel`` and ``SOPBackbone`` (modules ``embeddings``, ``layers``), with the
    hidden states and attentions recorded by transformers' output capturing."""

    @capture_outputs(tie_last_hidden_states=False)  # hidden_states[-1] is the last block's output, before the norm
    def encode(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutput:
        """[B, 1 + L, D] output of the last block (before the final norm); ``hidden_states`` (embeddings, then
        every block) and ``attentions`` when ``output_hidden_states`` / ``output_attentions`` ask for them."""
        hidden_states = self.embeddings(pixel_values, bool_masked_pos)  # [B, 1 + L, D]
        for layer in self.layers:
            hidden_states = layer(hidden_states, **kwargs)  # [B, 1 + L, D]
        return BaseModelOutput(last_hidden_state=hidden_states)


class SOPModel(_EncoderMixin, SOPPreTrainedModel):
    """The SOP ViT encoder. Returns all tokens after the final norm and the final [CLS] as ``pooler_output``.

    Like transformers' ViT models it honours ``config.output_hidden_states`` / ``config.output_attentions`` (call
    arguments override them), ``attn_implementation="sdpa" | "eager"`` and gradient checkpointing.

    Args:
        config: Architecture. ``drop_path_rate`` applies in training mode only; ``use_mask_token`` creates the iBOT
            mask token used when ``bool_masked_pos`` is passed.

    >>> import torch
    >>> from sop_hf import SOPConfig, SOPModel
    >>> config = SOPConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    >>> out = SOPModel(config)(torch.randn(1, 3, 32, 32), output_hidden_states=True)
    >>> len(out.hidden_states), tuple(out.hidden_states[-1].shape)
    (3, (1, 17, 32))
    """

    def __init__(self, config: SOPConfig, drop_path_rate: float | None = None, use_mask_token: bool | None = None):
        super().__init__(config)
        rate = config.drop_path_rate if drop_path_rate is None else drop_path_rate
        mask_token = config.use_mask_token if use_mask_token is None else use_mask_token
        _build_encoder(self, config, rate, mask_token)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.projection

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling | tuple:
        """Encode images.

        Args:
            pixel_values: [B, C, H, W], H and W multiples of ``patch_size``.
            bool_masked_pos: [B, L] (L = H*W / patch_size**2); True replaces that patch embedding by the mask token.
            **kwargs: transformers' keyword arguments: ``output_hidden_states`` (also return the embeddings and every
                block's output, before the final norm; default ``config.output_hidden_states``),
                ``output_attentions`` (every block's attention probabilities [B, heads, 1 + L, 1 + L], computed on
                the eager path for this call; default ``config.output_attentions``), ``return_dict`` (a
                ``BaseModelOutputWithPooling``, the default, or a tuple); the rest reach the attention kernel.
                ``interpolate_pos_encoding`` is accepted and ignored (always interpolated).
        """
        _check_kwargs(kwargs, type(self).__name__)
        encoded = self.encode(pixel_values, bool_masked_pos, return_dict=True, **kwargs)
        sequence_output = self.layernorm(encoded.last_hidden_state)  # [B, 1 + L, D]
        pooled_output = sequence_output[:, 0]  # [B, D]
        return BaseModelOutputWithPooling(
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )


class SOPForImageClassification(SOPPreTrainedModel):
    """``SOPModel`` with a linear classifier on the final [CLS] token (optionally concatenated with the mean patch
    token, ``config.classifier_mean_patch``, as ``Dinov2ForImageClassification``).

    The encoder sits under ``sop`` (``base_model_prefix``), so ``from_pretrained`` on an exported ``SOPModel`` folder
    loads the encoder and initialises only the classifier. ``labels`` give a loss chosen by ``config.problem_type``
    (cross-entropy for integer labels with ``num_labels > 1``), as transformers' image classifiers. The encoder has
    no mask token (fine-tuning never masks, and DDP would see an unused parameter).

    >>> import torch
    >>> from sop_hf import SOPConfig, SOPForImageClassification
    >>> config = SOPConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                    num_labels=3)
    >>> out = SOPForImageClassification(config)(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 2]))
    >>> tuple(out.logits.shape), out.loss.ndim
    ((2, 3), 0)
    """

    _keys_to_ignore_on_load_unexpected = [r"mask_token"]  # pretrained encoders may carry one; never used here

    def __init__(self, config: SOPConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.sop = SOPModel(config, use_mask_token=False)
        in_features = config.hidden_size * (2 if config.classifier_mean_patch else 1)
        self.classifier = nn.Linear(in_features, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.sop.get_input_embeddings()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ImageClassifierOutput | tuple:
        """Classify images.

        Args:
            pixel_values: [B, C, H, W], H and W multiples of ``patch_size``.
            labels: [B] class indices (or [B, num_labels] targets for regression / multi-label problems).
            **kwargs: As ``SOPModel.forward`` (``output_hidden_states``, ``output_attentions``, ``return_dict``;
                ``interpolate_pos_encoding`` is ignored, accepted as ViT's classifiers do).
        """
        if pixel_values is None:
            raise ValueError("SOPForImageClassification needs pixel_values")
        outputs = self.sop(pixel_values, return_dict=True, **kwargs)
        tokens = outputs.last_hidden_state  # [B, 1 + L, D]
        features = tokens[:, 0]
        if self.config.classifier_mean_patch:
            features = torch.cat([features, tokens[:, 1:].mean(dim=1)], dim=-1)  # [B, 2D]
        logits = self.classifier(features)  # [B, num_labels]
        loss = None
        if labels is not None:
            loss = self.loss_function(labels.to(logits.device), logits, self.config)
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class SOPBackbone(BackboneMixin, _EncoderMixin, SOPPreTrainedModel):
    """The encoder as a transformers backbone (``AutoBackbone``) for dense heads (DPT, Mask2Former, ...).

    Stages are ``"stem"`` (the embeddings) and ``"stage1"``..``"stageN"`` (block outputs); ``config.out_features`` /
    ``out_indices`` choose them. Every chosen stage goes through the final LayerNorm, drops [CLS] and is returned as
    a feature map [B, hidden_size, H / patch_size, W / patch_size]. The modules carry ``SOPModel``'s names, so an
    exported encoder folder loads without conversion.

    >>> import torch
    >>> from sop_hf import SOPBackbone, SOPConfig
    >>> config = SOPConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                    out_features=["stage1", "stage2"])
    >>> maps = SOPBackbone(config)(torch.randn(1, 3, 32, 48)).feature_maps
    >>> [tuple(m.shape) for m in maps]
    [(1, 32, 4, 6), (1, 32, 4, 6)]
    """

    _keys_to_ignore_on_load_unexpected = [r"mask_token"]  # pretrained encoders may carry one; never used here

    def __init__(self, config: SOPConfig):
        super().__init__(config)
        self.num_features = [config.hidden_size] * (config.num_hidden_layers + 1)
        _build_encoder(self, config, config.drop_path_rate, use_mask_token=False)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.projection

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> BackboneOutput | tuple:
        """Feature maps of the chosen stages.

        Args:
            pixel_values: [B, C, H, W], H and W multiples of ``patch_size``.
            **kwargs: ``output_hidden_states`` (also return every stage's tokens [B, 1 + L, D], unnormalised),
                ``output_attentions``, ``return_dict``: as ``SOPModel.forward``.
        """
        _check_kwargs(kwargs, type(self).__name__)
        wants_hidden = kwargs.pop("output_hidden_states", None)
        wants_hidden = self.config.output_hidden_states if wants_hidden is None else wants_hidden
        encoded = self.encode(pixel_values, None, output_hidden_states=True, return_dict=True, **kwargs)
        batch_size, _, height, width = pixel_values.shape
        grid_height, grid_width = height // self.config.patch_size, width // self.config.patch_size
        feature_maps = ()
        for stage, tokens in zip(self.stage_names, encoded.hidden_states):
            if stage in self.out_features:
                patches = self.layernorm(tokens)[:, 1:]  # [B, h*w, D]
                feature_map = patches.reshape(batch_size, grid_height, grid_width, -1).permute(0, 3, 1, 2)
                feature_maps += (feature_map.contiguous(),)  # [B, D, h, w]
        return BackboneOutput(feature_maps=feature_maps, hidden_states=_selected(encoded.hidden_states, wants_hidden),
                              attentions=encoded.attentions)  # fmt: skip


def _selected(hidden_states: tuple, wants: bool | int | list[int] | None) -> tuple | None:
    """The hidden states ``output_hidden_states`` asks for: all (True), none (False / None), or, for indices (negative
    ones count from the end), the chosen ones with ``None`` in the other places, as transformers' output capturing."""
    if wants is None or isinstance(wants, bool):
        return hidden_states if wants else None
    count = len(hidden_states)
    kept = {i % count for i in ([wants] if isinstance(wants, int) else wants) if -count <= i < count}
    return tuple(h if i in kept else None for i, h in enumerate(hidden_states))


__all__ = ["SOPPreTrainedModel", "SOPModel", "SOPForImageClassification", "SOPBackbone"]
