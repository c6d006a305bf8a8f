// A service imports MartRuntime and gets the layers below it: the core (configuration, tokens,
// statuses, validation), persistence and events are all part of every service's API, so one
// import is enough.
@_exported import MartCore
@_exported import MartDatabase
@_exported import MartEvents
