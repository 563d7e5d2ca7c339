// A stand-in for the Mesos module global, built everywhere: a global object
// with a constructor that nothing references, exported from the cdylib by
// the same build.rs mechanism as org_mesos_gelf_GelfContainerLogger.
// tests/module_export.rs checks `nm -D` shows it as `D` and that dlsym finds
// it, so CI proves the export path the real module symbol takes.
struct MesosGelfExportProbe {
  MesosGelfExportProbe(const char* n, int v) : name(n), apiVersion(v) {}
  const char* name;
  int apiVersion;
};

MesosGelfExportProbe mesos_gelf_export_probe("mesos-gelf", 2);
