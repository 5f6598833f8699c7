"""Library code logs; the CLI's one handler prints each record as the plain line it is: warnings on
stderr, progress lines on stdout (stderr when the record asks for it), nothing twice."""
from __future__ import annotations

import logging

from orchestrator.cli import logs


def test_records_print_as_plain_lines_on_the_right_stream(capsys):
    logs.install()
    logs.install()  # installing twice adds no second handler
    log = logging.getLogger("orchestrator.planning.data")
    log.warning("warning: %s is damaged", "datasets.json")
    log.info("[casme2] generating a synthetic casme2 dataset")
    logging.getLogger("model.backbone").info("backbone: ViT-B-32 from x", extra={"stderr": True})
    out, err = capsys.readouterr()
    assert out == "[casme2] generating a synthetic casme2 dataset\n"
    assert err == "warning: datasets.json is damaged\nbackbone: ViT-B-32 from x\n"


def test_library_modules_log_instead_of_taking_warn_callbacks():
    import inspect

    from orchestrator.planning import data, lock, plan, store
    from orchestrator.reporting import figures
    from orchestrator.serving import packages

    for fn in (data.record_prepared, data.prepared_or_recorded, plan.make_plan, store.ResultsStore.intact,
               figures.plan_figures, figures.write_figures, packages.stored_package, packages.train_and_store,
               lock.WorkdirLock.__init__):
        assert "warn" not in inspect.signature(fn).parameters, fn
