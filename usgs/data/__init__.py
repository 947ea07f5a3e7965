"""Datasets and LightningDataModules; every one yields the batch dict of `usgs.data.base`."""
