"""The CUDA translation unit of the GDA plugin compiles with nvcc (compile only: CI has no GPU).

Also holds the kernel to its register budget: spills would mean the per-thread rows left
registers, the main performance assumption of the kernel."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rvrt_plugins.build import GDA_SOURCE_DIR


def find_nvcc():
    for candidate in (shutil.which("nvcc"), *sorted(Path("/usr/local").glob("cuda*/bin/nvcc"))):
        if candidate and Path(candidate).exists():
            return str(candidate)
    return None


NVCC = find_nvcc()


@pytest.mark.skipif(NVCC is None, reason="nvcc (CUDA toolkit) not found on PATH or in /usr/local/cuda*/bin")
def test_kernel_compiles_for_sm80_and_sm90(tmp_path):
    command = [NVCC, "-std=c++17", "-O3", "-c", str(GDA_SOURCE_DIR / "gda_kernel.cu"), "-o",
               str(tmp_path / "gda_kernel.o"), "-gencode", "arch=compute_80,code=sm_80",
               "-gencode", "arch=compute_90,code=sm_90", "-Xptxas", "-v", "-Werror", "all-warnings"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr}"
    assert (tmp_path / "gda_kernel.o").stat().st_size > 0
    report = result.stdout + result.stderr
    # Capacities 8..32 cover RVRT's head dims (24, 32): those must not spill.
    spills = re.findall(r"guidedDeformAttentionKernelILi(\d+)E.*?\n.*?(\d+) bytes spill stores", report)
    assert len(spills) == 16, f"expected ptxas reports of 4 capacities x 2 types x 2 architectures\n{report}"
    for capacity, spilled in spills:
        if int(capacity) <= 32:
            assert int(spilled) == 0, f"capacity {capacity} spills {spilled} bytes\n{report}"
