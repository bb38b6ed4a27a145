# The recipes ccfleet ships modules for (ARCHITECTURE.md, "Recipes ccfleet ships modules for"):
# recipe name -> { healthPath, stateful, description? }, read from ./<recipe>.nix.
# Used for the per-recipe modules (./default.nix) and for the defaults of an
# `services.coop-cloud.apps.<name>` whose `recipe` is one of these. Add a recipe by
# adding its file and its name here.
let
  names = [
    "traefik"
    "bluesky-pds"
    "cryptpad"
    "custom-html"
    "custom-html-tiny"
    "discourse"
    "ghost"
    "hedgedoc"
    "immich"
    "keycloak"
    "lasuite-docs"
    "lasuite-drive"
    "lasuite-meet"
    "mailu"
    "matrix-synapse"
    "mattermost-lts"
    "mumble"
    "n8n"
    "plausible"
    "uptime-kuma"
  ];
in
builtins.listToAttrs (map (name: { inherit name; value = import (./. + "/${name}.nix"); }) names)
