import BunqAPI
import BunqCrypto
import Foundation
import Logging
import Synchronization
import Timekeeping

/// Renews a context against bunq: bootstraps what is missing (persisting every step), opens a session when the
/// registry's loop grants the session-server slot, and commits it through the registry before handing it back
/// to the loop: persist before use. Every write carries the incarnation the renewal started for, so a context
/// removed meanwhile stays removed.
struct BunqRenewer: SessionRenewer {
    let client: BunqClient
    let store: any StateBackend
    let registry: ContextRegistry
    let psd2: PSD2Material?
    let deviceDescription: String
    let logger: Logger
    /// In a cluster: renewals only under the context's lease, session-server calls within the egress group's
    /// shared budget.
    var cluster: Cluster? = nil

    /// bunq's `created` and our clock at the request may differ by this much before it is worth a warning.
    static let clockSkewWarning: TimeInterval = 60
    /// When skew was last warned about: at most once an hour, not once per session.
    let skewWarnings: Throttle

    /// The steps that make no session-server call: key, installation, PSD2 credential, device.
    static func isPreparation(_ step: BootstrapStep) -> Bool {
        step != .session && step != .confirmDevice
    }

    func prepare(_ name: String) async -> Result<Void, RenewalError> {
        do {
            // A bootstrap is itself under the lease: one daemon registers an identity, once.
            guard await registry.holdsLease(name) else { throw RenewalError.lostLease(name) }
            var (context, incarnation, logger) = try await load(name)
            while Self.isPreparation(context.registration.nextStep) {
                _ = try await advance(name, incarnation, &context, logger: logger)
            }
            return .success(())
        } catch {
            return .failure(Self.classify(error))
        }
    }

    func openSession(_ name: String) async -> Result<SessionInfo, RenewalError> {
        do {
            guard await registry.holdsLease(name) else { throw RenewalError.lostLease(name) }
            var (context, incarnation, logger) = try await load(name)
            // A context that lost its registration steps would otherwise never get there: finish them first.
            while Self.isPreparation(context.registration.nextStep) {
                _ = try await advance(name, incarnation, &context, logger: logger)
            }
            if let cluster { try await cluster.beginSessionCall(name, registry) }
            let advanced: Result<BunqSession?, any Error>
            do {
                advanced = .success(try await advance(name, incarnation, &context, logger: logger))
            } catch {
                advanced = .failure(error)
            }
            await cluster?.endSessionCall()
            guard let session = try advanced.get() else {
                // confirm_device found the interrupted device-server call never bound the device: it is
                // registered at the next attempt.
                throw RenewalError(.retryable, "the device was not bound; registering it", code: .deviceNotBound)
            }
            let skew = session.serverCreated.timeIntervalSince(session.created)
            if abs(skew) > Self.clockSkewWarning, skewWarnings.allow() {
                logger.warning("clock skew with bunq", metadata: ["bunq.skew_seconds": "\(Int(skew.rounded()))"])
            }
            let stored = SessionInfo(id: session.id, token: session.token, userId: session.user.id,
                                     created: session.created, expiresAt: session.expiresAt,
                                     grantedByUserId: session.user.grantedBy?.id)
            context.session = stored
            context.generation += 1
            try await registry.commitSession(name, incarnation: incarnation, stored, generation: context.generation,
                                          registration: context.registration)
            return .success(stored)
        } catch {
            return .failure(Self.classify(error))
        }
    }

    /// The full registration (with its secrets) comes from the store only now, for this renewal, with the
    /// incarnation its writes must present.
    private func load(_ name: String) async throws -> (StoredContext, UInt64, Logger) {
        guard let incarnation = await registry.incarnation(name), let context = try await store.context(name) else {
            throw ContextRegistry.gone(name)
        }
        var logger = logger
        logger[metadataKey: "bunq.context"] = "\(name)"
        return (context, incarnation, logger)
    }

    /// One bootstrap step, persisted whether it worked or not.
    private func advance(_ name: String, _ incarnation: UInt64, _ context: inout StoredContext,
                         logger: Logger) async throws -> BunqSession? {
        var registration = context.registration
        let step = registration.nextStep
        if step != .session { logger.info("bootstrap step", metadata: ["bunq.step": "\(step.rawValue)"]) }
        let persist: (IdentityRegistration) async throws -> Void = { [registry] registration in
            try await registry.saveRegistration(name, incarnation: incarnation, registration)
        }
        let opened: BunqSession?
        do {
            opened = try await client.advance(&registration, deviceDescription: deviceDescription, psd2: psd2,
                                              persist: persist)
        } catch {
            // What the failed step learned is kept, unless the context is gone (then that is the answer).
            try await persist(registration)
            context.registration = registration
            throw error
        }
        context.registration = registration
        if opened == nil { try await persist(registration) }
        return opened
    }

    /// Failures by what can heal them: retrying (network, 5xx, 491, 429, a dead session) or a human
    /// (everything else: rejected credentials or signatures, unauthentic replies, TLS, other 4xx).
    static func classify(_ error: any Error) -> RenewalError {
        switch error {
        case let error as BunqAPIError:
            return RenewalError(error.isRetryable ? .retryable : .needsAttention, error.description, code: .bunq(error.kind))
        case let error as RenewalError:
            return error
        case let error as StoreError where error.code == .missing:
            return RenewalError(.needsAttention, error.message, code: .removed)
        case let error as StoreError:
            return RenewalError(.retryable, "state store: \(error)", code: .store)
        case let error as CryptoError:
            return RenewalError(.needsAttention, "\(error)", code: .crypto)
        default:
            return RenewalError(.retryable, "\(error)")
        }
    }
}

/// Lets something through at most once per `interval` (a warning that would otherwise repeat per session).
final class Throttle: Sendable {
    private let interval: Duration
    private let clock: AnyClock
    private let last = Mutex<AnyClock.Instant?>(nil)

    init(every interval: Duration, clock: AnyClock) {
        self.interval = interval
        self.clock = clock
    }

    func allow() -> Bool {
        let now = clock.now
        return last.withLock { last in
            guard last.map({ now - $0 >= interval }) ?? true else { return false }
            last = now
            return true
        }
    }
}
