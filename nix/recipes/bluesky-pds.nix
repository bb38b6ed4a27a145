# services.coop-cloud.bluesky-pds: the `bluesky-pds` recipe (health path and statefulness from ABRA.md).
# Data for `lib.mkCcApp` (nix/lib/mkCcApp.nix); the recipe is the file name.
{
  healthPath = "/xrpc/_health";
  stateful = true;
}
