# The study's Hydra configs (`pkg://study.conf` on the search path of conf/config.yaml).
