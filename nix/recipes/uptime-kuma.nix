# services.coop-cloud.uptime-kuma: the `uptime-kuma` recipe (health path and statefulness from ABRA.md).
{ mkCcApp }:

mkCcApp {
  recipe = "uptime-kuma";
  healthPath = "/";
  stateful = true;
}
