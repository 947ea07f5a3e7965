"""LightningModules, one per method, on the shared :class:`usgs.methods.base.SegmentationModule`."""
