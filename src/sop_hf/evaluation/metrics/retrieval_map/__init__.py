"""Marks the folder as a package so the metric script ships with sop_hf; evaluate loads the script itself."""
