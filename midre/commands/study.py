"""``midre attack | pipeline | sweep | harden | prior | evaluate``: model inversion studies from the command line."""

from __future__ import annotations

import argparse
import json
from typing import Any

from midre.commands.progress_bar import ProgressBar

ATTACKS_HELP = """attacks (comma-separated):
  mi-face        Fredrikson et al. 2015: gradient descent on pixels, TV + L2 prior (no generator)
  deepinversion  Yin et al. 2020: pixels + the target's BatchNorm statistics, TV, jitter/flip
  gmi            Zhang et al. 2020: latent search in a WGAN-GP prior trained on public images
  kedmi          Chen et al. 2021: target-aware GAN, learned latent distribution per identity
  lomma+gmi      Nguyen et al. 2023: logit loss + surrogate models on top of GMI
  lomma+kedmi    the same on top of KEDMI
  plg-mi         Yuan et al. 2023: conditional GAN trained with the target's pseudo-labels
  rlb-mi         Han et al. 2023 (black-box): RL agent in the GMI prior's latent space, probabilities only
  brep-mi        Kahla et al. 2022 (label-only): boundary-repelling walk in the GMI latent space, labels only
  ppa            Struppek et al. 2022: W-space search with augmentations and the Poincare loss (StyleGAN2 or GMI prior)
  if-gmi         Qiu et al. 2024: layer-by-layer search of the generator's intermediate features in an l1 ball
  mirror         An et al. 2022 (white-box): W-space search with the prior's constraint"""


def _json_arg(text: str | None, flag: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag}: expected a JSON object")
    return value


def _add_attack_arguments(p: argparse.ArgumentParser, default_attacks: str) -> None:
    g = p.add_argument_group("attacks")
    g.add_argument("--attacks", "--attack", dest="attacks", default=default_attacks, metavar="NAMES",
                   help=ATTACKS_HELP + f"\n(default {default_attacks})")
    g.add_argument("--per-identity", type=int, default=2, metavar="N",
                   help="reconstructions per identity (default 2)")
    g.add_argument("--identities", type=int, default=None, metavar="K",
                   help="attack only the first K identities (default: all private identities)")
    g.add_argument("--steps", type=int, default=None, metavar="N",
                   help="optimisation steps of every attack (default: per-attack CPU budget, see docs/attacks.md)")
    g.add_argument("--restarts", type=int, default=None, metavar="R", help="random restarts (GAN attacks)")
    g.add_argument("--prior-steps", type=int, default=None, metavar="N",
                   help="generator iterations when a GAN prior is trained (default 400)")
    g.add_argument("--queries", type=int, default=None, metavar="N",
                   help="target queries (images) each black-box / label-only attack may make in total, over all "
                        "identities (rlb-mi, brep-mi; default: bounded by their steps)")
    g.add_argument("--budget", default=None, metavar="JSON",
                   help='per-attack budget overrides, e.g. \'{"gmi": {"steps": 300, "restarts": 3}}\'')
    g.add_argument("--attack-options", default=None, metavar="JSON",
                   help='per-attack options, e.g. \'{"deepinversion": {"bn_weight": 0.05}}\'')
    g.add_argument("--adaptive", action="store_true",
                   help="also run every white-box attack adaptively: it optimises through the defense's training-time "
                        "transform (an expectation over random erasing for MIDRE); adaptive rows appear beside the "
                        "standard ones. One attack only: --attack-options '{\"gmi\": {\"adaptive\": true}}'")
    g.add_argument("--public-data", default=None, metavar="PATH",
                   help="public images for GAN priors / LOMMA surrogates (an ImageFolder or archive), e.g. "
                        "extended_yale_b_cropped when att_faces is private")
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval-arch", default="resnet18",
                   help="architecture of the evaluation model (must differ from the target's; default resnet18)")
    e.add_argument("--eval-archs", default=None, metavar="ARCHS",
                   help="comma-separated judge architectures, each an independent evaluation model with its own "
                        "seed (default: --eval-arch and densenet121, two judges)")
    e.add_argument("--eval-epochs", type=int, default=20, help="evaluation model epochs (default 20)")
    e.add_argument("--eval-all-images", action="store_true",
                   help="train the evaluation model on every private image (its accuracy is then a train accuracy)")
    e.add_argument("--feature-identities", type=int, default=3, metavar="K",
                   help="identities in the feature-space plots (0: none; default 3)")
    o = p.add_argument_group("run")
    o.add_argument("--cache", default=None, metavar="DIR",
                   help="cache of evaluation models, priors and surrogates shared between runs (default OUT/cache)")
    o.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    o.add_argument("--out", required=True, metavar="DIR",
                   help="output folder: report.json, report.html, plots; re-running resumes")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    o.add_argument("--estimate-only", action="store_true",
                   help="print the cost estimate (seconds, peak memory; a short calibration run) as JSON and stop")
    o.add_argument("--no-estimate", action="store_true", help="start without printing the cost estimate")


def _attack_settings(args: argparse.Namespace) -> dict[str, Any]:
    from midre.attacks import resolve_attack_name

    attacks = [resolve_attack_name(a) for a in args.attacks.split(",") if a.strip()]
    budgets = _json_arg(args.budget, "--budget")
    common = {k: v for k, v in (("steps", args.steps), ("restarts", args.restarts),
                                ("prior_steps", args.prior_steps)) if v is not None}
    queries = getattr(args, "queries", None)
    if queries is not None:  # only the query-based attacks take a query budget
        from midre.attacks import ATTACKS

        for a in attacks:
            if ATTACKS[a].get("access"):
                budgets[a] = {"queries": queries, **budgets.get(a, {})}
    if common:
        budgets = {a: {**common, **budgets.get(a, {})} for a in set(attacks) | set(budgets)}
    return {"attacks": attacks, "per_identity": args.per_identity, "identities": args.identities,
            "attack_budgets": budgets, "attack_options": _json_arg(args.attack_options, "--attack-options"),
            "public_data": args.public_data, "eval_arch": args.eval_arch,
            "eval_archs": [a.strip() for a in args.eval_archs.split(",") if a.strip()] if args.eval_archs else None,
            "eval_epochs": args.eval_epochs,
            "eval_all_images": args.eval_all_images, "feature_identities": args.feature_identities,
            "cache_dir": args.cache, "device": args.device, "adaptive": bool(getattr(args, "adaptive", False))}


def _figure(stat: dict[str, Any] | None) -> str:
    """A report figure as the report shows it (:meth:`midre.report.model.Stat.text`), right-aligned."""
    from midre.report.render import stat as text

    return text(stat).rjust(6)


def _print_summary(report: dict[str, Any], out: str) -> None:
    from midre.report import format_delta

    for row in report.get("results", []):
        m = row["metrics"]
        attack = f"{row['attack']}{' (adaptive)' if row.get('adaptive') else ''}"
        print(f"{attack:>25} {row['defense']:>12}  Acc {_figure(m.get('acc'))}  "
              f"AttAcc@1 {_figure(m.get('attacc_top1'))}"
              f"  Δ {format_delta(row.get('tradeoff_delta'))}  "
              f"queries {m.get('queries', {}).get('mean', float('nan')):.0f}")
    for v in report.get("verdicts", []):
        print("verdict:", v["text"])
    for a in (report.get("deployment") or {}).get("attacks", []):
        print("as deployed:", a["statement"])
    print(f"report: {out}/report.html")


def _study_data(args: argparse.Namespace) -> dict[str, Any]:
    """The PipelineConfig fields of the pipeline / sweep / harden flags (``--config`` overrides them)."""
    from midre.commands.train import augment_from_args

    data: dict[str, Any] = {
        "data": args.data, "image_size": args.image_size or (32 if args.data == "digits" else 64),
        "channels": args.channels, "normalize": not args.no_normalize, "test_fraction": args.test_fraction,
        "split_seed": args.split_seed, "num_private": args.num_private, "arch": args.arch, "epochs": args.epochs,
        "batch_size": args.batch_size, "lr": args.lr, "augment": list(augment_from_args(args)),
        "seeds": args.seeds, **_attack_settings(args),
    }
    for name in ("defenses", "candidates", "max_accuracy_drop", "init_from", "finalists", "max_seeds"):
        if getattr(args, name, None) is not None:
            data[name] = getattr(args, name)
    if getattr(args, "no_refine", False):
        data["refine"] = False
    if args.config:
        with open(args.config) as handle:
            data.update(json.load(handle))
    return data


def _estimate(config: Any, args: argparse.Namespace) -> bool:
    """Print the cost estimate (midre.cost); True when only the estimate was asked for."""
    from midre.cost import print_estimate

    return print_estimate(config, estimate_only=getattr(args, "estimate_only", False),
                          enabled=not getattr(args, "no_estimate", False))


def run_pipeline_command(args: argparse.Namespace) -> int:
    from midre.plan import run_pipeline
    from midre.study import PipelineConfig

    config = PipelineConfig.from_dict(_study_data(args))
    if _estimate(config, args):
        return 0
    report = run_pipeline(config, args.out, progress=None if args.quiet else ProgressBar())
    _print_summary(report, args.out)
    return 0


def _print_frontier(report: dict[str, Any], out: str) -> None:
    attacks = [a["name"] for a in report.get("attacks", [])]
    print(f"{'candidate':>22} {'Acc':>13} " + " ".join(f"{a[:14]:>14}" for a in attacks) + "  pareto  note")
    for e in report.get("frontier", []):
        acc = e.get("acc") or {}
        cells = []
        for a in attacks:
            st = (e.get("attacc") or {}).get(a)
            cells.append(f"{st['mean']:7.2f}±{st['std']:5.2f}" if st else f"{'–':>13}")
        acc_txt = f"{acc['mean']:6.2f}±{acc['std']:5.2f}" if acc else f"{'–':>12}"
        print(f"{e['defense'][:22]:>22} {acc_txt:>13} " + " ".join(f"{c:>14}" for c in cells)
              + f"  {'yes' if e.get('pareto') else '':>6}  {e.get('skipped') or ''}")
    rec = report.get("recommendation")
    if rec:
        print(f"recommendation: {rec['defense']}: {rec['reason']}")
        for caveat in rec.get("caveats") or []:
            print(f"  caveat: {caveat}")
        if rec.get("checkpoint"):
            print(f"hardened checkpoint: {out}/{rec['checkpoint']}/")
    elif report.get("recommendation_note"):
        print(f"recommendation: none. {report['recommendation_note']}")
    print(f"report: {out}/report.html")


def run_sweep_command(args: argparse.Namespace) -> int:
    from midre.plan import run_study, study_config

    if getattr(args, "estimate_only", False):
        raise ValueError(f"--estimate-only: a {args.kind} has no up-front estimate (its search decides how many "
                         "targets, seeds and attack runs it trains); estimate one candidate with `midre pipeline "
                         "--defenses 'nodef;midre:a_h=0.4' ... --estimate-only` and scale by the grid")
    config = study_config(args.kind, _study_data(args))
    report = run_study(config, args.out, progress=None if args.quiet else ProgressBar())
    _print_frontier(report, args.out)
    return 0


def run_attack_command(args: argparse.Namespace) -> int:
    from midre.plan import run_attack_eval
    from midre.study import AttackEvalConfig

    config = AttackEvalConfig.from_dict({"target": args.target, "eval_model": args.eval_model, "seeds": args.seeds,
                                         **_attack_settings(args), **_deployment(args)})
    if _estimate(config, args):
        return 0
    report = run_attack_eval(config, args.out, progress=None if args.quiet else ProgressBar())
    _print_summary(report, args.out)
    return 0


def _deployment(args: argparse.Namespace) -> dict[str, Any]:
    """``deployment`` of an audit of the model as it would be served (``--policy`` given), else nothing."""
    if args.policy is None:
        if args.query_budget is not None or args.top_k is not None or args.strength is not None:
            raise ValueError("--query-budget / --top-k / --strength: audit a deployment with --policy NAME")
        return {}
    policy = {"name": args.policy, "top_k": args.top_k, "strength": args.strength}
    return {"deployment": {"policy": {k: v for k, v in policy.items() if v is not None},
                           "budget": args.query_budget, "model": args.target}}


def run_prior_command(args: argparse.Namespace) -> int:
    from midre.commands.train import data_spec_from_args
    from midre.data import load_dataset
    from midre.priors import PriorConfig, PublicData, load_or_train_prior

    spec = data_spec_from_args(args)
    if args.kind != "gmi" and not args.target:
        raise ValueError(f"--target: a {args.kind} prior uses the target model's predictions; give its folder")
    splits = load_dataset(spec)
    if args.num_private and splits.public is not None:
        images = splits.public.images  # the identities after the first K
    else:
        import torch

        images = torch.cat([splits.train.images, splits.test.images])  # every image is public
    public = PublicData.from_images(images, f"{spec.source} ({images.shape[0]} public images)")
    target = None
    if args.target:
        from midre.attacks import AttackTarget

        target = AttackTarget.from_checkpoint(args.target, device=args.device)
    config = PriorConfig(kind=args.kind, steps=args.steps, width=args.width, batch_size=args.batch_size, seed=args.seed)
    prior = load_or_train_prior(config, public, tuple(images.shape[1:]), cache_dir=args.out, target=target,
                                device=args.device, progress=None if args.quiet else ProgressBar())
    print(json.dumps({"prior": prior.info.get("key"), "dir": f"{args.out}/priors/{prior.info.get('key')}",
                      "kind": args.kind, "seconds": prior.info.get("seconds")}, indent=2))
    return 0


def run_evaluate_command(args: argparse.Namespace) -> int:
    from midre.commands.train import data_spec_from_args
    from midre.evaluation import EvalModelConfig, train_evaluation_model

    spec = data_spec_from_args(args)
    ev = train_evaluation_model(spec, args.out, EvalModelConfig(arch=args.eval_arch, epochs=args.eval_epochs,
                                                                all_images=args.eval_all_images),
                                device=args.device, progress=None if args.quiet else ProgressBar())
    print(json.dumps({"dir": str(ev.directory), "arch": ev.arch, "accuracy": ev.accuracy,
                      "accuracy_split": ev.accuracy_split}, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``pipeline``, ``sweep``, ``harden``, ``attack``, ``prior`` and ``evaluate`` to the ``midre`` CLI."""
    fmt = argparse.RawDescriptionHelpFormatter
    _register_pipeline(subparsers, fmt)
    _register_sweeps(subparsers, fmt)
    _register_attack(subparsers, fmt)
    _register_prior(subparsers, fmt)
    _register_evaluate(subparsers, fmt)


def _register_pipeline(subparsers: argparse._SubParsersAction, fmt: type) -> None:
    from midre.commands.train import add_augment_arguments, add_data_arguments

    p = subparsers.add_parser(
        "pipeline", help="full study: train NoDef/MIDRE targets, attack them, write the privacy report",
        formatter_class=fmt,
        description="Train one target per defense and seed, train (or reuse) the evaluation model and GAN priors, "
                    "attack every target, and write OUT/report.json + OUT/report.html with mean ± std over seeds "
                    "and a plain verdict per attack. Re-running with the same --out resumes.\n\n"
                    "example (AT&T faces, about 30 min on 2 CPU cores):\n"
                    "  midre pipeline --data ../shared/datasets/att_faces --image-size 64 \\\n"
                    "      --defenses nodef,midre --attacks deepinversion,gmi --out runs/att")
    add_data_arguments(p)
    t = p.add_argument_group("targets")
    t.add_argument("--arch", default="cnn-small", help="target architecture (default cnn-small)")
    t.add_argument("--defenses", default="nodef,midre",
                   help="comma-separated defenses, NoDef first; parameters after ':' e.g. 'nodef;midre:a_h=0.8' "
                        "(use ';' between defenses when giving parameters; default nodef,midre)")
    t.add_argument("--seeds", type=int, default=3, help="seeds: targets and attacks per defense (default 3)")
    t.add_argument("--epochs", type=int, default=30, help="target training epochs (default 30)")
    t.add_argument("--batch-size", type=int, default=32, help="target batch size (default 32)")
    t.add_argument("--lr", type=float, default=1e-3, help="target learning rate (default 1e-3)")
    add_augment_arguments(t)  # target training
    t.add_argument("--config", default=None, metavar="FILE",
                   help="JSON file of PipelineConfig fields overriding the flags")
    _add_attack_arguments(p, "deepinversion,gmi")
    p.set_defaults(func=run_pipeline_command)


def _register_attack(subparsers: argparse._SubParsersAction, fmt: type) -> None:
    a = subparsers.add_parser(
        "attack", help="attack one trained model and report AttAcc, KNN distance and δ_eval",
        formatter_class=fmt,
        description="Run model inversion attacks against a model trained by `midre train` (its data spec is "
                    "read from model.json) and judge the reconstructions with an evaluation model.\n\n"
                    "example:\n  midre attack --target runs/t --eval-model runs/eval --attack deepinversion "
                    "--out runs/t-attack")
    a.add_argument("--target", required=True, metavar="DIR", help="folder of the trained target (model.json)")
    a.add_argument("--eval-model", default=None, metavar="DIR",
                   help="folder of an evaluation model (`midre evaluate`); default: train/reuse one in the cache")
    a.add_argument("--seeds", type=int, default=3, help="attack repetitions for mean ± std (default 3)")
    _add_attack_arguments(a, "deepinversion")
    d = a.add_argument_group("as deployed (query attacks only: rlb-mi, brep-mi; docs/serving.md)")
    d.add_argument("--policy", choices=("full", "top-k", "rounded", "label-only", "shield"), default=None,
                   help="attack the model as served under this output policy")
    d.add_argument("--top-k", type=int, default=None, help="the policy's top_k (top-k, rounded, shield)")
    d.add_argument("--strength", type=float, default=None, help="the shield's strength in [0, 1) (default 0.8)")
    d.add_argument("--query-budget", type=int, default=None, metavar="N",
                   help="queries one client may make (default: unlimited)")
    a.set_defaults(func=run_attack_command)


def _register_prior(subparsers: argparse._SubParsersAction, fmt: type) -> None:
    from midre.commands.train import add_data_arguments

    pr = subparsers.add_parser(
        "prior", help="train a GAN prior on public images (reused by gmi / lomma+gmi)", formatter_class=fmt,
        description="Train a GAN prior on the public images of a data set and store it under "
                    "OUT/priors/<key>/ (generator/discriminator safetensors + prior.json). With --num-private K "
                    "the identities after the first K are used; otherwise every image of --data is public.\n\n"
                    "example:\n  midre prior --data ../shared/datasets/extended_yale_b_cropped --image-size 64 "
                    "--out cache")
    add_data_arguments(pr)
    pr.add_argument("--kind", choices=("gmi", "kedmi", "plg"), default="gmi",
                    help="gmi: WGAN-GP (GMI); kedmi / plg need --target (default gmi)")
    pr.add_argument("--target", default=None, metavar="DIR", help="target folder for kedmi / plg priors")
    pr.add_argument("--steps", type=int, default=400, help="generator iterations (default 400)")
    pr.add_argument("--width", type=int, default=16, help="base channel width of G and D (default 16)")
    pr.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    pr.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    pr.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    pr.add_argument("--out", required=True, metavar="DIR", help="cache folder to write the prior into")
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.set_defaults(func=run_prior_command)


def _register_evaluate(subparsers: argparse._SubParsersAction, fmt: type) -> None:
    from midre.commands.train import add_data_arguments

    ev = subparsers.add_parser(
        "evaluate", help="train (or reuse) the evaluation model of a data set", formatter_class=fmt,
        description="Train the independent evaluation model that judges reconstructions (AttAcc, KNN distance) "
                    "and print its accuracy. Cached under OUT/evaluation/<key>/.")
    add_data_arguments(ev)
    ev.add_argument("--eval-arch", default="resnet18", help="architecture (default resnet18)")
    ev.add_argument("--eval-epochs", type=int, default=20, help="epochs (default 20)")
    ev.add_argument("--eval-all-images", action="store_true", help="train on every private image")
    ev.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    ev.add_argument("--out", required=True, metavar="DIR", help="cache folder")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=run_evaluate_command)


def _target_arguments(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    from midre.commands.train import add_augment_arguments

    t = p.add_argument_group("targets")
    t.add_argument("--arch", default="cnn-small", help="target architecture (default cnn-small)")
    t.add_argument("--seeds", type=int, default=3, help="seeds: targets and attacks per candidate (default 3)")
    t.add_argument("--epochs", type=int, default=30, help="target training epochs (default 30)")
    t.add_argument("--batch-size", type=int, default=32, help="target batch size (default 32)")
    t.add_argument("--lr", type=float, default=1e-3, help="target learning rate (default 1e-3)")
    add_augment_arguments(t)
    t.add_argument("--config", default=None, metavar="FILE", help="JSON file of config fields overriding the flags")
    return t


CANDIDATES_HELP = ("candidate defenses, ';'-separated: name[:key=value,...]; key=lo..hi is a range in steps of "
                   "0.1 (lo..hi/step sets the step), key=a|b|c a list; a+b combines defenses. NoDef is always "
                   "added as the baseline")


def _register_sweeps(subparsers: argparse._SubParsersAction, fmt: type) -> None:
    """``midre sweep`` and ``midre harden``."""
    from midre.commands.train import add_data_arguments
    from midre.sweep import DEFAULT_HARDEN_CANDIDATES, DEFAULT_SWEEP_CANDIDATES

    s = subparsers.add_parser(
        "sweep", help="privacy-utility frontier of a grid of candidate defenses", formatter_class=fmt,
        description="Train every candidate defense on every seed, attack it, and write the privacy-utility "
                    "frontier (Acc and AttAcc per attack with ± over seeds, the Pareto-optimal set, a frontier "
                    "plot per attack) to OUT/report.json + OUT/report.html. Re-running with the same --out "
                    "resumes.\n\nexample:\n  midre sweep --data digits --candidates 'midre:a_h=0.2..0.8/0.2; nls; "
                    "midre+nls' --attacks deepinversion --seeds 2 --out runs/sweep")
    add_data_arguments(s)
    t = _target_arguments(s)
    t.add_argument("--candidates", default=DEFAULT_SWEEP_CANDIDATES,
                   help=CANDIDATES_HELP + f" (default '{DEFAULT_SWEEP_CANDIDATES}')")
    t.add_argument("--max-accuracy-drop", type=float, default=None, metavar="POINTS",
                   help="also recommend the strongest candidate within this accuracy drop (default: no "
                        "recommendation)")
    _add_attack_arguments(s, "deepinversion,gmi")
    s.set_defaults(func=run_sweep_command, kind="sweep")

    h = subparsers.add_parser(
        "harden", help="which defense should I ship? the strongest candidate within an accuracy budget",
        formatter_class=fmt,
        description="Search the candidates (a coarse grid, refined around the best a_h; candidates clearly beyond "
                    "the accuracy budget or clearly dominated are stopped early) and recommend the one that lowers "
                    "leakage most within --max-accuracy-drop, with the reason, the frontier as evidence and its "
                    "hardened checkpoint in OUT/recommended/; or say plainly that none qualifies.\n\nexample:\n"
                    "  midre harden --data ../shared/datasets/att_faces --attacks deepinversion,gmi "
                    "--max-accuracy-drop 1.0 --out runs/harden")
    add_data_arguments(h)
    t = _target_arguments(h)
    t.add_argument("--init-from", default=None, metavar="DIR",
                   help="start every candidate (NoDef included) from this trained model folder")
    t.add_argument("--candidates", default=DEFAULT_HARDEN_CANDIDATES,
                   help=CANDIDATES_HELP + f" (default '{DEFAULT_HARDEN_CANDIDATES}')")
    t.add_argument("--max-accuracy-drop", type=float, default=1.0, metavar="POINTS",
                   help="accuracy budget: largest accepted drop from NoDef, in points (default 1.0)")
    t.add_argument("--finalists", type=int, default=None, metavar="N",
                   help="candidates that go on to every seed after the seed-0 screening (default 2; a candidate "
                        "whose seed-0 interval overlaps the best one's always goes on)")
    t.add_argument("--max-seeds", type=int, default=None, metavar="N",
                   help="a finalist whose paired comparison with NoDef is undecided gets one more seed at a time, "
                        "up to N (default 5; --seeds N: none added)")
    t.add_argument("--no-refine", action="store_true", help="do not refine a_h around the best coarse candidate")
    _add_attack_arguments(h, "deepinversion,gmi")
    h.set_defaults(func=run_sweep_command, kind="harden")


__all__ = ["register"]
