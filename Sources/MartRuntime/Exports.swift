// A service imports MartRuntime and gets the core with it: the core's types (configuration,
// tokens, statuses, validation) are part of every service's API, so one import is enough.
@_exported import MartCore
