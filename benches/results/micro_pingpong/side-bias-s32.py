"""Session 32's check of micro_pingpong's two sides (run from benches/, with rustmalloc's wheel
installed and unpacked into /work/rm_main, and a copy of that directory in /work/rm_mai2):

    python side-bias-s32.py same            # both workers the installed build, the same environment
    python side-bias-s32.py site_vs_dir     # the installed build against the same build unpacked
    python side-bias-s32.py copy            # two unpacked copies of the same build

Prints the summary of ``micro_pingpong.measure`` over 12 process pairs of churn_obj_mix (ratio
second worker over first) and each side's median ns per call. See README.md, session 32.
"""
import sys, statistics
sys.path.insert(0, "/work/main/benches")
import micro_pingpong as mp, configs as cfgmod
configs = {c.name: c for c in cfgmod.all_configs()[0]}
mine = cfgmod.worker_env(configs["rustmalloc"])
import os
variant = sys.argv[1]
if variant == "same":
    envs = [dict(mine), dict(mine)]
elif variant == "other_same_path":   # both via PYTHONPATH=/work/rm_main
    envs = [dict(mine, PYTHONPATH="/work/rm_main"), dict(mine, PYTHONPATH="/work/rm_main")]
elif variant == "copy":
    envs = [dict(mine, PYTHONPATH="/work/rm_main"), dict(mine, PYTHONPATH="/work/rm_mai2")]
elif variant == "site_vs_dir":
    envs = [dict(mine, PYTHONPATH="/work/rm_main"), dict(mine, PYTHONPATH="/tmp/rmbench-decoy")]
ratios, ns, faults = mp.measure(sys.executable, "churn_obj_mix", envs, 12, 10, "1")
from pyperformance_pingpong import summary
s = summary(ratios)
print(variant, {k: round(v, 3) if isinstance(v, float) else v for k, v in s.items()}, [round(statistics.median(x),2) for x in ns])
