import ArgumentParser
import BunqAPI
import BunqProxy
import ConfigFile
import Foundation
import Logging
import NIOCore
import MetricsEndpoint
import PostgresState
import SessiondConfiguration
import ServiceLifecycle
import SessionKeeper
import SessionServer
import Synchronization
import SystemdSupport
import Timekeeping
import UnixSignals

/// `bunq-sessiond`: keeps bunq API sessions alive for a PSD2 provider, API-key identities and OAuth-connected users.
@main
struct BunqSessiondCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bunq-sessiond",
        abstract: "Keeps bunq API sessions alive and serves them to local applications.")

    @Option(help: "The configuration file.")
    var config: String = "/etc/bunq-sessiond/bunq-sessiond.yaml"

    @Flag(name: .customLong("check-config"), help: "Validate the configuration (and PSD2 material), then exit: 0 ok, 78 error.")
    var checkConfig = false

    @Option(name: .customLong("import-state"),
            help: "Copy the SQLite state in this directory into the configured PostgreSQL store, then exit (idempotent).")
    var importState: String?

    @Option(name: .customLong("restore"),
            help: "Restore this backup (bunq-sessionctl backup) into the configured, empty state directory, then exit.")
    var restore: String?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "info"

    /// The provider's certificate and key, checked locally; problems are configuration errors naming the key.
    static func checkPSD2(_ provider: ProviderSettings, config: String) throws -> PSD2Material {
        do {
            return try PSD2Material(certificatePEM: provider.certificatePEM, certificatePath: provider.certificatePath,
                                    privateKeyPEM: provider.privateKeyPEM, privateKeyPath: provider.privateKeySource,
                                    chainPEM: provider.chainPEM, chainPath: provider.chainPath)
        } catch {
            let key = error.file == provider.certificatePath ? "provider.certificate"
                : error.file == provider.chainPath ? "provider.certificate_chain" : "provider.private_key"
            throw ConfigurationError(file: config, key: key, reason: error.description)
        }
    }

    /// `--import-state DIR`: the SQLite state in DIR (locked, so no daemon writes it meanwhile; opened with its own
    /// key: DIR/master.key, else the configured one) into the configured PostgreSQL store (with the store's key).
    static func importState(from directory: String, state: StateSettings) async throws {
        guard let postgres = state.postgres else {
            let message = "bunq-sessiond: configuration error: state.backend: --import-state copies into PostgreSQL; "
                + "this configuration's backend is \(state.backend.rawValue)\n"
            FileHandle.standardError.write(Data(message.utf8))
            throw ExitCode(configurationErrorExit)
        }
        do {
            let database = directory + "/" + StateStore.fileName
            guard FileManager.default.fileExists(atPath: database) else {
                throw StoreError(.database, "\(directory) holds no state (\(StateStore.fileName) is missing)")
            }
            let lock = try StateLock(directory: directory)
            defer { withExtendedLifetime(lock) {} }
            let ownKey = FileManager.default.fileExists(atPath: directory + "/master.key")
            let sourceKey = ownKey
                ? try MasterKey.load(credentialsDirectory: nil, stateDirectory: directory)
                : try MasterKey.load(credentialsDirectory: state.credentialsDirectory, stateDirectory: directory,
                                     file: state.masterKeyFile)
            let source = try StateStore(directory: directory, masterKey: sourceKey, keySource: ownKey ? directory + "/master.key"
                : MasterKey.source(credentialsDirectory: state.credentialsDirectory, stateDirectory: directory,
                                   file: state.masterKeyFile))
            let targetKey = try MasterKey.load(credentialsDirectory: state.credentialsDirectory,
                                               stateDirectory: state.directory, file: state.masterKeyFile)
            let target = try PostgresState(settings: postgres, masterKey: targetKey,
                                           keySource: MasterKey.source(credentialsDirectory: state.credentialsDirectory,
                                                                       stateDirectory: state.directory,
                                                                       file: state.masterKeyFile),
                                           timeout: state.timeout, logger: Logger(label: "bunq-sessiond"))
            let outcome = try await target.withRunning { try await StateImport.run(from: source, into: target) }
            print("bunq-sessiond: imported \(outcome.imported.count) contexts from \(database) into \(target.location)"
                + (outcome.imported.isEmpty ? "" : " (\(outcome.imported.joined(separator: ", ")))")
                + "; kept \(outcome.kept.count) the store already had at the same or a newer generation")
        } catch {
            FileHandle.standardError.write(Data("bunq-sessiond: cannot import \(directory): \(error)\n".utf8))
            throw ExitCode(73)
        }
    }

    /// `--restore BACKUP`: a backup made by `bunq-sessionctl backup` becomes the state of the configured (empty)
    /// state directory; the next normal start serves every identity in it without registering anything again.
    static func restoreState(from backup: String, state: StateSettings) async throws {
        guard state.backend == .sqlite else {
            let message = "bunq-sessiond: configuration error: state.backend: --restore restores an SQLite state; "
                + "a PostgreSQL store is restored with PostgreSQL's own tools\n"
            FileHandle.standardError.write(Data(message.utf8))
            throw ExitCode(configurationErrorExit)
        }
        let keySource = MasterKey.source(credentialsDirectory: state.credentialsDirectory,
                                         stateDirectory: state.directory, file: state.masterKeyFile)
        do {
            // The backup is sealed by the key it was made under: that key must be back first, never a new one.
            guard FileManager.default.fileExists(atPath: keySource) else {
                throw StoreError(.masterKey, "the backup is sealed by its master key, and \(keySource) does not exist: put "
                    + "the key back (the master-key credential, state.master_key_file, or master.key in the state directory)")
            }
            let key = try MasterKey.load(credentialsDirectory: state.credentialsDirectory,
                                         stateDirectory: state.directory, file: state.masterKeyFile)
            let outcome = try await StateBackup.restore(backup, into: state.directory, masterKey: key, keySource: keySource)
            print("bunq-sessiond: restored \(outcome.contexts) contexts (\(outcome.bytes) bytes) from \(backup) into "
                + "\(state.directory); start the daemon to serve them")
        } catch {
            FileHandle.standardError.write(Data("bunq-sessiond: cannot restore \(backup): \(error)\n".utf8))
            throw ExitCode(73)
        }
    }

    /// sysexits.h EX_CONFIG.
    static let configurationErrorExit: Int32 = 78

    func run() async throws {
        // Everything the daemon creates (state, key files) is private to it, and its memory (the master key,
        // every token) never lands in a core file.
        umask(0o077)
        ServiceManager.disableCoreDumps()
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw ValidationError("--log-level must be one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let settings: DaemonConfiguration
        let psd2: PSD2Material?
        do {
            settings = try DaemonConfiguration.load(file: config)
            psd2 = try settings.keeper.provider.map { try Self.checkPSD2($0, config: config) }
        } catch {
            FileHandle.standardError.write(Data("bunq-sessiond: configuration error: \(error)\n".utf8))
            ServiceManager.failed(errno: EINVAL, status: "configuration error: \(error)")
            throw ExitCode(Self.configurationErrorExit)
        }
        if checkConfig {
            let identities = (settings.keeper.provider == nil ? 0 : 1) + settings.keeper.apiKeys.count
            print("bunq-sessiond: \(config) is valid (\(identities) configured identities, \(settings.keeper.bunq.environment.rawValue))")
            for warning in psd2?.warnings ?? [] { print("warning: \(warning)") }
            return
        }

        if let importState {
            try await Self.importState(from: importState, state: settings.keeper.state)
            return
        }
        if let restore {
            try await Self.restoreState(from: restore, state: settings.keeper.state)
            return
        }

        // The sockets' I/O threads, before anything starts SwiftNIO's shared group (it can be sized only once).
        NIOSingletons.groupLoopCountSuggestion = settings.socket.eventLoops
        // Native journal entries under systemd (stderr is the journal), readable lines otherwise.
        let journal = JournalLogHandler.stderrIsJournal
        LoggingSystem.bootstrap { label in
            if journal {
                var handler = JournalLogHandler(identifier: "bunq-sessiond")
                handler.logLevel = level
                return handler
            }
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "bunq-sessiond")
        // Metrics, when configured, are bootstrapped before anything makes one (otherwise swift-metrics stays a
        // no-op, at no cost).
        let registry = settings.metrics.map { _ in MetricsService.bootstrap() }
        // The certificate's expiry is logged by the keeper: at start, then daily.
        let keeper: Keeper
        do {
            var openStore: Keeper.StoreOpener?
            let state = settings.keeper.state
            if let postgres = state.postgres {
                let storeLogger = logger
                openStore = { key, source in
                    try PostgresState(settings: postgres, masterKey: key, keySource: source, timeout: state.timeout,
                                      logger: storeLogger)
                }
            }
            keeper = try Keeper(configuration: settings.keeper, psd2: psd2, logger: logger, openStore: openStore)
        } catch {
            logger.error("cannot start", metadata: ["error": "\(error)"])
            ServiceManager.failed(errno: EIO, status: "cannot start: \(error)")
            throw ExitCode(73)
        }
        Self.raiseDescriptorLimit(needed: settings.socket.limits.maxConnections + SocketServer.Limits.adminReserve + 256
                                      + (settings.proxy.map { $0.limits.maxConnections + SocketServer.Limits.adminReserve } ?? 0),
                                  logger: logger)
        logger.info("starting", metadata: ["bunq.api": "\(settings.keeper.bunq.endpoints.apiBaseURL)",
                                           "bunq.state": "\(settings.keeper.state.directory)"])
        // Signing inline on the event loops spreads it over the cores only when there is a loop per core; with
        // fewer (the default on 2 cores is one), signatures go to SwiftNIO's blocking pool, a thread per core.
        let service = SocketService(keeper: keeper, access: AccessControl(rules: settings.access), logger: logger,
                                    signsInline: settings.socket.eventLoops >= ProcessInfo.processInfo.activeProcessorCount)
        // Socket activation: systemd's socket (named "api" in the .socket unit, or the only one passed).
        let inherited = ServiceManager.listeningSockets()
        let socketFD = (inherited.first { $0.name == "api" } ?? (inherited.count == 1 && inherited.first?.name != "proxy" ? inherited.first : nil))?.fd
        let server = SocketServer(path: settings.socket.path, inheritedSocket: socketFD, service: service,
                                  limits: settings.socket.limits, logger: logger,
                                  releaseFreeMemory: ServiceManager.releaseFreeMemory)
        // The store's own service (PostgreSQL's connection pool) first: the group stops services in reverse, so it
        // goes last, after the keeper has left the cluster.
        var services: [any Service] = (keeper.stateBackend as? any Service).map { [$0] } ?? []
        services += [keeper, server, Readiness(keeper: keeper, server: server, service: service, logger: logger),
                                       Reloader(configPath: config, running: settings, keeper: keeper, service: service,
                                                logger: logger)]
        if let proxy = settings.proxy {
            // The access rules are the JSON-RPC socket's own object: a reload changes both at once.
            services.append(ProxyServer(path: proxy.socket, inheritedSocket: inherited.first { $0.name == "proxy" }?.fd,
                                        keeper: keeper, access: service.access, limits: proxy.limits, logger: logger))
        } else if inherited.contains(where: { $0.name == "proxy" }) {
            logger.warning("""
                systemd passed the proxy's socket, but the configuration has no proxy.socket: its connections are \
                not answered (disable bunq-sessiond-proxy.socket, or configure the proxy)
                """)
        }
        if let metrics = settings.metrics, let registry {
            services.append(MetricsService(listen: metrics.listen, registry: registry, keeper: keeper, logger: logger))
        }
        if let interval = ServiceManager.watchdogInterval {
            services.append(Watchdog(keeper: keeper, server: server, interval: interval, logger: logger))
        }
        let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint],
                                                      logger: logger))
        do {
            try await group.run()
        } catch {
            // A failure before or after READY (an unreadable state, the socket path taken): one line that says
            // which file and why, and a non-zero exit so systemd sees the failure.
            let reason = keeper.startFailure.withLock { $0 } ?? Self.reason(error)
            logger.error("cannot run", metadata: ["error": "\(reason)"])
            ServiceManager.failed(errno: EIO, status: "failed: \(reason)")
            throw ExitCode(73)
        }
    }

    /// Raises the soft limit on open descriptors to the hard one: every connection is one, and a daemon that runs
    /// out refuses everyone. Warns when even the hard limit is below `needed` (max_connections plus its own).
    static func raiseDescriptorLimit(needed: Int, logger: Logger) {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
        }
        if limit.rlim_cur < rlim_t(needed) {
            logger.warning("open-file limit below what socket.max_connections needs", metadata: [
                "bunq.limit": "\(limit.rlim_cur)", "bunq.needed": "\(needed)",
            ])
        }
    }

    /// The error a service group failed with.
    static func reason(_ error: any Error) -> String { "\(error)" }
}

/// Declares the daemon ready once the socket listens, every restored session has been checked and each configured
/// identity's first attempt at a session has finished (live, or failing and retrying), asking systemd for more
/// start-up time while a slow first registration runs. Keeps the STATUS line current; says STOPPING on shutdown.
struct Readiness: Service {
    let keeper: Keeper
    let server: SocketServer
    let service: SocketService
    let logger: Logger
    /// How long READY waits for first registrations before it is sent anyway (the STATUS line then tells).
    var registrationWait: Duration = .seconds(300)
    /// How often `EXTEND_TIMEOUT_USEC` is repeated while waiting; each grant lasts three times as long.
    var extendEvery: Duration = .seconds(10)

    func run() async throws {
        // Every wait honours shutdown and cancellation: a SIGTERM during start, or a keeper or socket that failed
        // to start (the group is then cancelled), ends this service at once instead of hanging the daemon.
        do {
            try await cancelWhenGracefulShutdown {
                try await keeper.restored.fired()
                // Restoring read every context at once (on the store's own threads, whose allocator arenas keep
                // what they freed): that memory goes back to the system before READY.
                ServiceManager.releaseFreeMemory()
                try await server.listening.fired()
                // The socket answers from here on (contexts report `bootstrapping` until live).
                service.markReady()
                await waitForFirstRegistrations()
                try Task.checkCancellation()
                ServiceManager.ready(status: await keeper.statusLine())
                logger.info("ready", metadata: ["bunq.socket": "\(server.path)"])
                await every(.seconds(5), on: keeper.clock, immediately: false) {
                    ServiceManager.status(await keeper.statusLine())
                }
            }
        } catch is OneShotSignal.Failed {
            // The keeper or the server failed to start and says why; nothing to add.
        } catch is CancellationError {
        }
        ServiceManager.stopping()
    }
}

extension Readiness {
    func waitForFirstRegistrations() async {
        let clock = keeper.clock
        let start = clock.now
        var lastExtend: AnyClock.Instant?
        await poll(every: .milliseconds(100), on: clock) {
            let pending = await keeper.startupPending()
            if pending.isEmpty { return true }
            if start.duration(to: clock.now) >= registrationWait {
                logger.warning("ready before the first registration finished",
                               metadata: ["bunq.contexts": "\(pending.joined(separator: ","))"])
                return true
            }
            if lastExtend.map({ $0.duration(to: clock.now) >= extendEvery }) ?? true {
                ServiceManager.extendStartup(by: extendEvery * 3,
                                             status: "registering \(pending.joined(separator: ", ")) with bunq")
                lastExtend = clock.now
            }
            return false
        }
    }
}

/// Pings systemd's watchdog at half its interval, but only while the renewal loop is ticking and the socket
/// server's event loop answers: a stalled scheduler or a wedged server stops the pings and gets the daemon
/// restarted.
struct Watchdog: Service {
    let keeper: Keeper
    let server: SocketServer
    let interval: Duration
    let logger: Logger

    func run() async throws {
        let period = interval / 2
        let periodSeconds = Double(period.components.seconds) + Double(period.components.attoseconds) / 1e18
        await keeper.registry.setMaxSleep(periodSeconds / 2)
        await cancelWhenGracefulShutdown {
            var lastTicks = await keeper.registry.ticks
            await every(period, on: keeper.clock, immediately: false) {
                let ticks = await keeper.registry.ticks
                let serverAlive = await server.probe(timeout: period / 2)
                if ticks != lastTicks, serverAlive {
                    ServiceManager.watchdog()
                } else {
                    logger.warning("watchdog: no progress, not pinging",
                                   metadata: ["bunq.scheduler_ticking": "\(ticks != lastTicks)", "bunq.server_alive": "\(serverAlive)"])
                }
                lastTicks = ticks
            }
        }
    }
}

/// SIGHUP: re-reads the configuration and applies access rules, renewal policy and API-key identities without
/// dropping connections. An invalid new configuration is refused with an error; the old one keeps running. Changes
/// a reload cannot apply (the socket, the store, bunq's address, …) are named in the log: they wait for a restart.
struct Reloader: Service {
    let configPath: String
    /// The configuration the daemon started with.
    let running: DaemonConfiguration
    let keeper: Keeper
    let service: SocketService
    let logger: Logger

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        await cancelWhenGracefulShutdown {
            for await _ in signals {
                ServiceManager.reloading()
                do {
                    // Every section is read and validated before anything changes; the identities are applied
                    // next (a store failure half-way is finished by the next reload), the access rules last.
                    let new = try DaemonConfiguration.load(file: configPath)
                    try await keeper.applyReload(new.keeper)
                    service.updateAccess(new.access)
                    let pending = new.changesNeedingRestart(since: running)
                    if pending.isEmpty {
                        logger.notice("configuration reloaded", metadata: ["bunq.config": "\(configPath)"])
                    } else {
                        logger.warning("configuration reloaded; these changes take effect at the next restart",
                                       metadata: ["bunq.config": "\(configPath)",
                                                  "bunq.restart_needed": "\(pending.joined(separator: ","))"])
                    }
                } catch {
                    logger.error(error is ConfigurationError
                                 ? "reload refused: the new configuration is invalid; the running one stays"
                                 : "reload incomplete: a change could not be applied; reload again to finish it",
                                 metadata: ["bunq.config": "\(configPath)", "error": "\(error)"])
                }
                ServiceManager.ready(status: await keeper.statusLine())
            }
        }
    }
}
