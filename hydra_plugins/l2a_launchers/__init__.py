"""Hydra launcher plugins of this project (Hydra only instantiates launchers that live in
the `hydra_plugins` namespace). The logic is in the `launch` package; configs in
conf/hydra/launcher/."""
