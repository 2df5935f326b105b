import ArgumentParser
import BunqAPI
import Foundation
import Logging
import ServiceLifecycle
import SessionKeeper
import SessionServer
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

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "info"

    /// The provider's certificate and key, checked locally; problems are configuration errors naming the key.
    static func checkPSD2(_ provider: KeeperConfiguration.Provider, config: String) throws -> PSD2Material {
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

    /// sysexits.h EX_CONFIG.
    static let configurationErrorExit: Int32 = 78

    func run() async throws {
        // Everything the daemon creates (state, key files) is private to it.
        umask(0o077)
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw ValidationError("--log-level must be one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let settings: KeeperConfiguration
        let psd2: PSD2Material?
        do {
            settings = try KeeperConfiguration.load(file: config)
            psd2 = try settings.provider.map { try Self.checkPSD2($0, config: config) }
        } catch {
            FileHandle.standardError.write(Data("bunq-sessiond: configuration error: \(error)\n".utf8))
            throw ExitCode(Self.configurationErrorExit)
        }
        if checkConfig {
            let identities = (settings.provider == nil ? 0 : 1) + settings.apiKeys.count
            print("bunq-sessiond: \(config) is valid (\(identities) configured identities, \(settings.environment.rawValue))")
            for warning in psd2?.warnings ?? [] { print("warning: \(warning)") }
            return
        }

        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "bunq-sessiond")
        for warning in psd2?.warnings ?? [] { logger.warning("\(warning)", metadata: ["bunq.context": "provider"]) }
        let keeper: Keeper
        do {
            keeper = try Keeper(configuration: settings, psd2: psd2, logger: logger)
        } catch {
            logger.critical("cannot start", metadata: ["error": "\(error)"])
            throw ExitCode(73)
        }
        logger.info("starting", metadata: ["bunq.api": "\(settings.endpoints.apiBaseURL)",
                                           "bunq.state": "\(settings.stateDirectory)"])
        let service = SocketService(keeper: keeper, access: AccessControl(rules: settings.access), logger: logger)
        var limits = SocketServer.Limits()
        limits.maxConnections = settings.maxConnections
        limits.idleTimeout = .seconds(settings.idleTimeout)
        let server = SocketServer(path: settings.socketPath, service: service, limits: limits, logger: logger)
        let readiness = Readiness(keeper: keeper, server: server, service: service, logger: logger)
        let group = ServiceGroup(configuration: .init(services: [keeper, server, readiness],
                                                      gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}

/// Declares the daemon ready once the socket listens and every restored session has been checked.
struct Readiness: Service {
    let keeper: Keeper
    let server: SocketServer
    let service: SocketService
    let logger: Logger

    func run() async throws {
        await keeper.restored.wait()
        await server.listening.wait()
        service.markReady()
        logger.info("ready", metadata: ["bunq.socket": "\(server.path)"])
        try await gracefulShutdown()
    }
}
