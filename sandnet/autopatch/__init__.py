"""The directory that ``sandnet run`` puts first on PYTHONPATH; see sitecustomize.py."""
