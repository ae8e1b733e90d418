"""The node runs the models without the training code (torchvision's and detectron2's split)."""

from __future__ import annotations

import subprocess
import sys


def test_the_node_imports_no_training_code():
    code = ("import sys\n"
            "import mammo_scp.node, mammo_scp.worker, mammo_scp.models.analyzer, "
            "mammo_scp.warmup\n"
            "print(sorted(m for m in sys.modules if m.startswith('mammo_scp.training')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300)
    assert out.stdout.strip() == "[]", out.stdout
    # and the training code is there, apart
    out = subprocess.run([sys.executable, "-c", "import mammo_scp.training.train"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
