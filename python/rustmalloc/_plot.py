"""The statistics as a picture: ``python -m rustmalloc stats --plot out.png``."""

from __future__ import annotations

from typing import Optional

from ._stats import Snapshot, format_bytes, stats

INSTALL_HINT = (
    "plotting needs matplotlib, an optional dependency: pip install 'rustmalloc[plot]' "
    "(or pip install matplotlib)"
)


def plot(path: str, snapshot: Optional[Snapshot] = None) -> str:
    """Write a chart of blocks in use and free per size class, and bytes per domain, to
    ``path`` (PNG, or any format matplotlib knows from the suffix). Returns ``path``.
    Raises RuntimeError with install instructions when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError(INSTALL_HINT) from None
    s = snapshot if snapshot is not None else stats()
    fig, (classes_ax, domains_ax) = plt.subplots(
        2, 1, figsize=(11, 8), gridspec_kw={"height_ratios": [3, 1]}
    )
    rows = sorted(s.size_classes, key=lambda c: (c.heap, c.domain, c.block_size))
    labels = [f"{c.domain} {c.block_size:,}" for c in rows]
    x = range(len(rows))
    classes_ax.bar(x, [c.blocks_in_use for c in rows], label="blocks in use", color="#c0392b")
    classes_ax.bar(x, [c.blocks_free for c in rows], bottom=[c.blocks_in_use for c in rows],
                   label="blocks free (carved)", color="#95a5a6")
    classes_ax.set_xticks(list(x))
    classes_ax.set_xticklabels(labels, rotation=90, fontsize=6)
    classes_ax.set_yscale("symlog")
    classes_ax.set_ylabel("blocks")
    classes_ax.set_title(f"rustmalloc: blocks per size class (domain, block size); "
                         f"fragmentation {s.fragmentation:.1%}")
    classes_ax.legend()
    names = list(s.domains)
    in_use = [s.domains[n].bytes_in_use for n in names]
    peak = [s.domains[n].peak_bytes_in_use for n in names]
    domains_ax.barh(names, peak, color="#f5b7b1", label="peak bytes in use")
    domains_ax.barh(names, in_use, color="#c0392b", label="bytes in use")
    for i, n in enumerate(names):
        domains_ax.text(peak[i], i, "  " + format_bytes(in_use[i]), va="center", fontsize=8)
    domains_ax.set_xlabel(f"bytes (resident: {format_bytes(s.os.bytes_resident)}, "
                          f"mapped: {format_bytes(s.os.bytes_mapped)})")
    domains_ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
