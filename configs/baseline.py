"""The paper's baselines, trained by the same loop: `--config=configs/baseline.py:BASE,KIND[,WIDTH]`.

  BASE   a config in this folder (cifar10_cpu, cifar10, svhn, digits, tiny)
  KIND   plain       a plain (non-causal) network of BASE's layout, trained on its final exit
                     only; with WIDTH, only the first WIDTH groups' channels exist ("full
                     training" at that width); the full-width one is also the network that
                     brute-force slicing and fine-tuning start from (dnn_jax/baselines.py)
         depth_only  a plain full-width network with an exit after every block, trained with
                     the joint loss over depth only (the conventional anytime network)

  python -m dnn_jax.main --config=configs/baseline.py:cifar10_cpu,plain,4 --workdir=runs/cifar10_cpu/plain_w4
  python -m dnn_jax.main --config=configs/baseline.py:cifar10_cpu,depth_only --workdir=runs/cifar10_cpu/depth_only

Note: a plain network of G groups costs G^2 / (G (G + 1) / 2) = 2G / (G + 1) times the MACs of
the causal DNNet of the same channels; for the 8-group CPU preset, the plain network of 6 groups
has the DNNet's MACs.
"""

from dnn_jax.config_base import load_config_file

KINDS = ("plain", "depth_only")
BASES = ("cifar10_cpu", "cifar10", "svhn", "digits", "tiny")


def get_config(arg: str = "cifar10_cpu,plain"):
  base, kind, *width = arg.split(",") + ([] if "," in arg else [""])
  if base not in BASES:
    raise ValueError(f"configs/baseline.py: base {base!r} is not one of {', '.join(BASES)} "
                     "(configs/baseline.py:BASE,KIND[,WIDTH])")
  if kind not in KINDS:
    raise ValueError(f"configs/baseline.py: kind {kind!r} is not one of {', '.join(KINDS)} "
                     "(configs/baseline.py:BASE,KIND[,WIDTH])")
  if len(width) > 1 or (width and not (width[0].isdigit() and int(width[0]) >= 1)):
    raise ValueError(f"configs/baseline.py: WIDTH {','.join(width)!r} is not a number of "
                     "groups >= 1 (configs/baseline.py:BASE,KIND[,WIDTH])")
  c = load_config_file(__file__, base)()
  c.model.causal = False
  # The rest of BASE's loss recipe (head gradients, distillation) carries over: the depth-only
  # network is trained like the DNNet, over its depth exits only.
  c.loss.lambda_scheme = "final" if kind == "plain" else "full_width"
  # Trunk gradient equilibrium assumes channel-causal layers: the baselines train without it
  # (for the depth-only network it would rescale by depth alone, which BASE never measured).
  c.loss.trunk_gradient = "sum"
  # The networks trained alone were trained with the shared head (for their one exit, or the
  # depth-only network's full-width exits, the two heads compute the same family of maps).
  c.model.exit_head = "shared"
  if width:
    c.model.num_groups = int(width[0])
  return c
