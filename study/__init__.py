"""The dense vs L2A context-extension study (study/RESULTS.md): its commands
(`python -m study <step>`), its configs (study/conf, on the Hydra search path of
conf/config.yaml), its tests (study/tests) and its generated report."""
