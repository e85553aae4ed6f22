"""SOPImageProcessor: resize the shorter side, centre-crop to ``size``, rescale to [0, 1] and normalise.

The evaluation transform of DINO/iBOT/SOP: shorter side to ``size / crop_pct`` (256 for 224), centre crop ``size``,
ImageNet mean/std. Pure PIL/NumPy (no torchvision). Saved beside every exported encoder and registered for
``AutoImageProcessor``; it only imports transformers, so it also ships as remote code.

>>> from PIL import Image
>>> processor = SOPImageProcessor(size=32)
>>> processor(Image.new("RGB", (50, 40)), return_tensors="pt")["pixel_values"].shape
torch.Size([1, 3, 32, 32])
"""

from transformers.image_processing_backends import PilBackend
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling


class SOPImageProcessor(PilBackend):
    """Resize + centre crop + normalise.

    Args:
        size: Output side in pixels (an int), or the resize dict that saved processors carry
            (``{"shortest_edge": 256}``, in which case ``crop_size`` gives the output).
        crop_pct: Fraction of the resized shorter side kept by the crop (0.875: 256 -> 224). Use 1.0 to resize
            straight to ``size`` (tiny images such as 28-px Fashion-MNIST).
        **kwargs: Any ``PilBackend`` option (``image_mean``, ``image_std``, ``resample``, ``do_convert_rgb``, ...).
    """

    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BICUBIC
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"shortest_edge": 256}
    default_to_square = False
    crop_size = {"height": 224, "width": 224}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True

    def __init__(self, size: int | dict | None = None, crop_pct: float = 0.875, **kwargs):
        if not 0.0 < crop_pct <= 1.0:
            raise ValueError(f"SOPImageProcessor crop_pct must be in (0, 1], got {crop_pct}")
        if isinstance(size, int):
            if size < 1:
                raise ValueError(f"SOPImageProcessor size must be >= 1, got {size}")
            kwargs["crop_size"] = {"height": size, "width": size}
            size = {"shortest_edge": max(size, round(size / crop_pct))}
        self.crop_pct = crop_pct
        super().__init__(size=size, **kwargs)

    def to_dict(self) -> dict:
        output = super().to_dict()
        output["crop_pct"] = self.crop_pct
        return output


__all__ = ["SOPImageProcessor"]
