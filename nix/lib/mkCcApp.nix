# `mkCcApp`: a thin NixOS module for one recipe, `services.coop-cloud.<recipe>`, with the
# options of an app (../modules/app-options.nix) whose defaults are this recipe's.
#
#   mkCcApp { recipe = "ghost"; healthPath = "/ghost/api/admin/site/"; stateful = true; }
#
# The optional arguments keep the seed's names: `healthOk` (accepted HTTP statuses),
# `healthTimeout` and `timeout` (seconds, or duration strings), `after` (extra systemd
# units the app's unit orders after) and `appName` (the app's name on the host, default
# the recipe). Each becomes the default of the option of the same name.
{ lib }:

{ recipe
, healthPath
, stateful ? true
, description ? "the ${recipe} Co-op Cloud app"
, healthOk ? [ 200 ]
, healthTimeout ? "5m"
, timeout ? "10m"
, after ? [ ]
, appName ? recipe
  # true for traefik: on wherever `services.coop-cloud` is.
, enabledWithBase ? false
}:

{ config, options, ... }:

let
  cfg = config.services.coop-cloud.${recipe};
  baseEnabled = (options.services.coop-cloud ? enable) && config.services.coop-cloud.enable;
in
{
  options.services.coop-cloud.${recipe} = lib.mkOption {
    description = "Deploy ${description} through the ccfleet agent.";
    default = { };
    type = lib.types.submodule (import ../modules/app-options.nix {
      recipeModule = {
        inherit recipe healthPath stateful description healthOk healthTimeout timeout after appName;
        enable =
          if enabledWithBase then {
            default = baseEnabled;
            defaultText = lib.literalExpression "config.services.coop-cloud.enable";
          } else {
            default = false;
          };
      };
    });
  };

  config.services.coop-cloud = {
    # The per-recipe modules feed the same list the agent renders `apps` from (apps.nix).
    recipeModuleApps = lib.mkIf cfg.enable [ cfg ];
    # Enabling a recipe module turns the base on (coop-cloud.nix); traefik, on because the
    # base is, does not count.
    recipeModulesEnabled = lib.mkIf (!enabledWithBase) [ cfg.enable ];
  };
}
