# services.coop-cloud.n8n: the `n8n` recipe (health path and statefulness from ABRA.md).
# Data for `lib.mkCcApp` (nix/lib/mkCcApp.nix); the recipe is the file name.
{
  healthPath = "/healthz";
  stateful = true;
}
