"""Datasets: the index every stage reads, the synthetic benchmark, and readers for VOC and plain folders."""
