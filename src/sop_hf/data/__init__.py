"""Data files shipped with sop_hf (see LICENSE_FASHION_MNIST.txt)."""
