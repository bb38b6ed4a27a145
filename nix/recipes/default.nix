# One thin module per recipe ccfleet ships (ABRA.md, "Recipes ccfleet ships modules for"),
# each made by `lib.mkCcApp`. Add a recipe by adding a file here and to this list.
{ lib, ... }:

let
  mkCcApp = import ../lib/mkCcApp.nix { inherit lib; };
in
{
  imports = map (file: import file { inherit mkCcApp; }) [
    ./traefik.nix
    ./bluesky-pds.nix
    ./cryptpad.nix
    ./custom-html.nix
    ./custom-html-tiny.nix
    ./discourse.nix
    ./ghost.nix
    ./hedgedoc.nix
    ./immich.nix
    ./keycloak.nix
    ./lasuite-docs.nix
    ./lasuite-drive.nix
    ./lasuite-meet.nix
    ./mailu.nix
    ./matrix-synapse.nix
    ./mattermost-lts.nix
    ./mumble.nix
    ./n8n.nix
    ./plausible.nix
    ./uptime-kuma.nix
  ];
}
