# services.coop-cloud.traefik: the `traefik` recipe (health path and statefulness from ABRA.md).
{ mkCcApp }:

mkCcApp {
  recipe = "traefik";
  healthPath = null;
  stateful = true;
  description = "the Traefik reverse proxy (deployed first by services.coop-cloud; its ACME state lives in a volume)";
}
