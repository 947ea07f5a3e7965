"""Run functions behind the entry points; the only package (with the entry points) that touches Hydra."""
