"""`python -m eval [overrides]`: evaluate a model (Hydra app, conf/eval_config.yaml).

    python -m eval model.path=outputs/tiny/<run>/export eval=tiny
    python -m eval model.path=Qwen/Qwen3-8B eval.lengths=[32768,131072]
    python -m eval model.path=outputs/qwen3_128k/<run>          # its latest checkpoint

Exit codes: 0 done; 2 bad config, model, checkpoint or data; 1 the output cannot be written
(full disk, read-only directory). One line `error: ...` either way, no
results.json). docs/EVAL.md describes the output.
"""

from __future__ import annotations

import sys
from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def run(raw: dict, run_dir: Path, log=print) -> dict:
    """Validate, load, evaluate, write results.json + PNGs; returns the results."""
    from eval.config import build_eval, build_model_spec
    from eval.load import load_model
    from eval.plots import write_plots
    from eval.report import format_table, write_results
    from eval.runner import evaluate
    from l2a.errors import writing_to

    spec = build_model_spec(raw.get("model"))
    cfg = build_eval(raw.get("eval"))
    model, tokenizer = load_model(spec)
    log(f"model: {spec.path or 'random ' + spec.random} ({type(model).__name__}, "
        f"{next(model.parameters()).dtype}, {next(model.parameters()).device})")
    results = evaluate(model, tokenizer, cfg, log=log)
    results["model"] = {"path": spec.path, "random": spec.random, "class": type(model).__name__}
    results["config"] = raw.get("eval")
    with writing_to(run_dir):  # a full disk or read-only directory: one line naming it
        run_dir.mkdir(parents=True, exist_ok=True)
        results["plots"] = write_plots(results, run_dir) if cfg.plots else []
        path = write_results(run_dir, results)
    print(format_table(results), flush=True)
    print(f"results: {path}", flush=True)
    return results


def main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    import train.config  # noqa: F401  (registers the l2a_timestamp resolver)
    from train.run_log import discard_empty_run_dir

    @hydra.main(config_path=CONF_DIR, config_name="eval_config", version_base="1.3")
    def app(cfg) -> None:
        from eval.errors import EvalError
        from l2a.errors import ConfigError, WriteError

        run_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            raw = OmegaConf.to_container(cfg, resolve=True)
            run(raw, run_dir, log=lambda s: print(s, file=sys.stderr, flush=True))
        except (EvalError, ConfigError) as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            discard_empty_run_dir(run_dir)
            sys.exit(2)
        except WriteError as e:  # results.json is written last, whole or not at all
            print(f"error: {e}", file=sys.stderr, flush=True)
            discard_empty_run_dir(run_dir)
            sys.exit(1)

    from l2a.entry_errors import run_hydra_app

    run_hydra_app(app)


if __name__ == "__main__":
    main()
