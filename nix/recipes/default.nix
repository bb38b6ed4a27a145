# One thin module per recipe ccfleet ships (./table.nix), `services.coop-cloud.<recipe>`,
# each made by `lib.mkCcApp` from the recipe's health path and statefulness.
{ lib, ... }:

let
  mkCcApp = import ../lib/mkCcApp.nix { inherit lib; };
in
{
  imports = lib.mapAttrsToList (recipe: data: mkCcApp ({ inherit recipe; } // data)) (import ./table.nix);
}
