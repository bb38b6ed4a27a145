# A small TOML writer for the test harness's fake `pkgs.formats.toml` (the real one in
# nixpkgs runs a converter at build time, which an evaluation-only test cannot do).
# Tables become `[a.b]` sections, lists of tables `[[a]]`, everything else inline.
# Like the real format, it refuses null: a module must leave such keys out.
{ lib }:

let
  bareKey = key: builtins.match "[A-Za-z0-9_-]+" key != null;
  renderKey = key: if bareKey key then key else builtins.toJSON key;
  isTableList = value: builtins.isList value && value != [ ] && lib.all builtins.isAttrs value;

  # JSON string escapes (\" \\ \n \uXXXX) are valid in TOML basic strings.
  inline = path: value:
    if value == null then throw "TOML has no null (at ${lib.concatStringsSep "." path})"
    else if builtins.isAttrs value then
      "{ " + lib.concatStringsSep ", " (lib.mapAttrsToList (key: v: "${renderKey key} = ${inline (path ++ [ key ]) v}") value) + " }"
    else if builtins.isList value then "[" + lib.concatMapStringsSep ", " (inline path) value + "]"
    else if builtins.isBool value || builtins.isInt value || builtins.isString value then builtins.toJSON value
    else throw "cannot render ${builtins.typeOf value} as TOML (at ${lib.concatStringsSep "." path})";

  header = path: lib.concatMapStringsSep "." renderKey path;

  # The body of the table at `path`: its plain keys, then its sub-tables and lists of tables.
  table = path: attrs:
    let
      isSection = value: builtins.isAttrs value || isTableList value;
      plain = lib.filterAttrs (_: value: !isSection value) attrs;
      sections = lib.filterAttrs (_: value: isSection value) attrs;
      renderSection = key: value:
        if builtins.isAttrs value then
          "\n[${header (path ++ [ key ])}]\n" + table (path ++ [ key ]) value
        else
          lib.concatMapStrings (element: "\n[[${header (path ++ [ key ])}]]\n" + table (path ++ [ key ]) element) value;
    in
    lib.concatStrings (lib.mapAttrsToList (key: value: "${renderKey key} = ${inline (path ++ [ key ]) value}\n") plain)
    + lib.concatStrings (lib.mapAttrsToList renderSection sections);
in
table [ ]
