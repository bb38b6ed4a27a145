# `mkCcApp`: a thin NixOS module for one recipe, `services.coop-cloud.<recipe>`, that
# forwards to `services.coop-cloud.apps.<recipe>` with the recipe's health path and
# statefulness as overridable defaults.
#
#   mkCcApp { recipe = "ghost"; healthPath = "/ghost/api/admin/site/"; stateful = true; }
{ lib }:

{ recipe
, healthPath
, stateful ? true
, description ? "the ${recipe} Co-op Cloud app"
}:

{ config, ... }:

let
  cfg = config.services.coop-cloud.${recipe};
in
{
  options.services.coop-cloud.${recipe} = lib.mkOption {
    description = "Deploy ${description} through the ccfleet agent.";
    default = { };
    type = lib.types.submodule {
      imports = [ ../modules/app-options.nix ];
      config = {
        # Off unless asked for, unlike an entry of `services.coop-cloud.apps` (whose
        # option default is true). Priority 1400: above that option default, below
        # `mkDefault`, so the base module can still turn traefik on with `mkDefault`.
        enable = lib.mkOverride 1400 false;
        recipe = lib.mkDefault recipe;
        healthPath = lib.mkDefault healthPath;
        stateful = lib.mkDefault stateful;
        declaredAt = "services.coop-cloud.${recipe}";
      };
    };
  };

  config.services.coop-cloud.apps.${recipe} = lib.mkIf cfg.enable
    (builtins.removeAttrs cfg [ "_module" ]);
}
