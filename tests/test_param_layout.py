"""The per-tensor layout adds up to ModelSpec's exact counts for every catalog model."""

import pytest

from sharder import param_layout as pl
from sharder.model_catalog import catalog_names
from sharder.model_loader import load_model


@pytest.mark.parametrize("name", catalog_names())
def test_layout_matches_param_count(name):
    m = load_model(name)
    layer = sum(t.numel for t in pl.layer_tensors(m))
    assert layer == m.layer_params()
    head = pl.head_tensor(m)
    total = (pl.embedding_tensor(m).numel + m.num_layers * layer
             + sum(t.numel for t in pl.final_norm_tensors(m)) + (head.numel if head else 0))
    assert total == m.total_params()
