import BunqAPI
import Foundation
import Logging

/// The in-memory record of every context (no secrets but session tokens), updated together with the store.
actor ContextCache {
    private var records: [String: ContextRecord] = [:]

    func set(_ record: ContextRecord) { records[record.name] = record }
    func setMany(_ many: [ContextRecord]) { for record in many { records[record.name] = record } }
    func get(_ name: String) -> ContextRecord? { records[name] }
    func remove(_ name: String) { records[name] = nil }
}

/// Renews a context against bunq: bootstraps what is missing (persisting every step), opens a session, and
/// commits it to the store before handing it to the scheduler: persist before use.
struct BunqRenewer: SessionRenewer {
    let client: BunqClient
    let store: StateStore
    let cache: ContextCache
    let psd2: PSD2Material?
    let deviceDescription: String
    let logger: Logger

    func renew(_ name: String) async -> Result<SessionInfo, RenewalError> {
        // The full registration (with its secrets) comes from the store only now, for this renewal.
        guard await cache.get(name) != nil, var context = try? store.context(name) else {
            return .failure(RenewalError(.needsAttention, "context \(name) is unknown"))
        }
        var logger = logger
        logger[metadataKey: "bunq.context"] = "\(name)"
        let persist: (IdentityRegistration) async throws -> Void = { registration in
            context.registration = registration
            try store.saveRegistration(name, kind: context.kind, registration)
            await cache.set(context.record)
        }
        do {
            var registration = context.registration
            var opened: BunqSession?
            while opened == nil {
                let step = registration.nextStep
                if step != .session {
                    logger.info("bootstrap step", metadata: ["bunq.step": "\(step.rawValue)"])
                }
                do {
                    opened = try await client.advance(&registration, deviceDescription: deviceDescription, psd2: psd2,
                                                      persist: persist)
                } catch {
                    try await persist(registration)
                    throw error
                }
                if opened == nil { try await persist(registration) }
            }
            guard let session = opened else { throw RenewalError(.retryable, "no session") }
            let stored = SessionInfo(id: session.id, token: session.token, userId: session.user.id,
                                       created: session.created, expiresAt: session.expiresAt)
            context.registration = registration
            context.session = stored
            context.generation += 1
            try store.saveSession(name, stored, generation: context.generation, registration: registration)
            await cache.set(context.record)
            return .success(stored)
        } catch {
            return .failure(Self.classify(error))
        }
    }

    static func classify(_ error: any Error) -> RenewalError {
        switch error {
        case let error as BunqAPIError:
            switch error.kind {
            case .credentialsRejected:
                return RenewalError(.needsAttention, "\(error.endpoint): \(error.message)")
            default:
                return RenewalError(.retryable, error.description)
            }
        case let error as RenewalError:
            return error
        case let error as StoreError:
            return RenewalError(.retryable, "state store: \(error)")
        default:
            return RenewalError(.retryable, "\(error)")
        }
    }
}
