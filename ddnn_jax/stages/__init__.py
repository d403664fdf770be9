"""The stages of ``ddnn``, one public entry each: ``train.run_training``, ``collect.collect``,
``route.route``, ``evaluate.evaluate``, ``report.report`` and ``timing.time_inference``. An entry
checks its arguments, takes the run's lock, reads its inputs once, computes through ``core`` and
writes once through ``rundir``. ``analyses`` builds results.json's records for evaluate;
``figures``, ``plotting`` and ``report_deployment`` draw the report's figures and tables."""
