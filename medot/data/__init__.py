"""Data for medot: reading medical images and uploads (:mod:`medot.data.io`), the synthetic
benchmark (:mod:`medot.data.synthetic`) and dataset folders."""
