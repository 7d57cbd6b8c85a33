"""Synthetic endoscopy data: :mod:`~endofm.data.synthetic.render` draws videos with polyps (and their masks
and boxes), :mod:`~endofm.data.synthetic.writers` writes them in the original datasets' layouts. The whole
corpus (pretraining clips and every task's layout) is :func:`endofm.tasks.corpus.write_synthetic_corpus`."""

from endofm.data.synthetic.render import SyntheticVideo, mask_to_box, render_video
from endofm.data.synthetic.writers import (
    cvc_layout,
    kumc_layout,
    polypdiag_layout,
    voc_xml,
    write_cvc,
    write_kumc,
    write_polypdiag,
    write_pretrain,
)

__all__ = [
    "SyntheticVideo",
    "cvc_layout",
    "kumc_layout",
    "mask_to_box",
    "polypdiag_layout",
    "render_video",
    "voc_xml",
    "write_cvc",
    "write_kumc",
    "write_polypdiag",
    "write_pretrain",
]
