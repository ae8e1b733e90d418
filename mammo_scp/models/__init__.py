"""What the node loads and runs: the two networks (:mod:`.unet`, :mod:`.frcnn`), batch-norm
folding (:mod:`.fold`), the verified model store (:mod:`.store`) and the analyzer that runs
them on an image (:mod:`.analyzer`). Training and evaluation live in :mod:`mammo_scp.training`.
"""
