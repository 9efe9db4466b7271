"""Print the CPU fused-vs-eager markdown table of benchmarks/RESULTS.md.

Run: python benchmarks/cpu_table.py   (median of 11 timed calls after one warm-up, time.perf_counter)
fwd runs under no_grad; fwd+bwd is forward + backward with a random upstream gradient. Shapes are the
NYUv2 MTAN batch (8x13x288x384), its depth map, MT-CP features at H/4 of 288x384 (8x256x72x96) and
normals (8x3x288x384). For the per-op pytest-benchmark cases see benchmarks/bench_cpu.py.
"""

import time

import torch

from xtc_ext import ops, reference


def median_ms(fn, reps=11):
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[reps // 2] * 1e3


def fwd_bwd(fn, args, needs_grad):
    xs = [a.clone().requires_grad_() if g else a for a, g in zip(args, needs_grad)]
    out = fn(*xs)
    upstream = torch.rand_like(out) if out.dim() > 0 else torch.tensor(0.7)

    def step():
        fn(*xs).backward(upstream)
        for x in xs:
            x.grad = None

    return step


def cases():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 13, 288, 384, generator=g)
    labels = torch.randint(-1, 13, (8, 288, 384), generator=g)
    depth = torch.rand(8, 1, 288, 384, generator=g) * 10
    depth[depth < 1] = 0
    feats = [torch.randn(8, 256, 72, 96, generator=g) for _ in range(2)]
    normals = [torch.randn(8, 3, 288, 384, generator=g) for _ in range(2)]
    return [
        ("masked_cross_entropy", (logits, labels), (True, False)),
        ("soft_cross_entropy", (logits, torch.randn(logits.shape, generator=g)), (True, False)),
        ("masked_l1_loss", (torch.randn(8, 1, 288, 384, generator=g), depth), (True, False)),
        ("cosine_similarity_loss", tuple(feats), (True, True)),
        ("cosine_similarity_loss", tuple(normals), (True, False)),
        ("sigmoid_gate", tuple(feats), (True, True)),
    ]


def main():
    print("| op | shape | eager fwd ms | fused fwd ms | fwd speed-up | eager fwd+bwd ms | fused fwd+bwd ms | fwd+bwd speed-up |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, args, needs_grad in cases():
        fused, eager = getattr(ops, name), getattr(reference, name)
        with torch.no_grad():
            f_fwd, e_fwd = median_ms(lambda: fused(*args)), median_ms(lambda: eager(*args))
        f_bwd, e_bwd = median_ms(fwd_bwd(fused, args, needs_grad)), median_ms(fwd_bwd(eager, args, needs_grad))
        shape = "x".join(map(str, args[0].shape))
        print(f"| {name} | {shape} | {e_fwd:.2f} | {f_fwd:.2f} | {e_fwd / f_fwd:.2f}x | {e_bwd:.2f} | {f_bwd:.2f} | "
              f"{e_bwd / f_bwd:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
