"""Neuron cards: the pairs that excite a neuron most, in words and in pictures.

table.py streams DIR/tables/top_pairs.parquet from the store (the analysis writes it);
thumbnails.py makes the small embedded JPEGs; card.py gathers one neuron's facts and lays out
its card, alone (`modalscope neuron`) or inside the report.
"""
