"""What only training and evaluation use: data, augmentation, the recipe, the trainers, the
ImageNet backbone import, evaluation and the ``models`` command. The node (``serve``,
``work``) imports none of it; it loads and runs the shipped models with
:mod:`mammo_scp.models`.
"""
