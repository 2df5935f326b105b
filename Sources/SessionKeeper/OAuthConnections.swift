import BunqAPI
import BunqCrypto
import Foundation
import Logging

/// An authorize URL handed to an operator: send the user there; bunq redirects back with `code` and `state`.
public struct OAuthAuthorization: Sendable, Equatable {
    public let url: String
    public let state: String
    public let redirectURI: String
    public let expiresAt: Date
}

/// The provider's OAuth client as this daemon last saw it. Pending `state`s (single-use, valid for 10 minutes)
/// live in the store, so a restart or another daemon on the store completes what this one issued; the client is
/// fetched from bunq again by a daemon that does not know it.
actor OAuthStates {
    static let lifetime: TimeInterval = 600
    private(set) var client: OAuthClientInfo?

    func setClient(_ client: OAuthClientInfo) { self.client = client }
}

extension Keeper {
    /// The provider's live session and installation, for calls made as the provider.
    private func providerSession() async throws -> (InstallationContext, token: String, userId: Int) {
        guard configuration.provider != nil else {
            throw KeeperError(.noProvider, "no provider is configured (provider: in the configuration)")
        }
        guard case .granted(let token, let userId, _, _, _)? = await registry.tokenGrant("provider"),
              let context = try await store.context("provider") else {
            throw KeeperError(.providerNotLive, "the provider has no live session yet; try again shortly")
        }
        return (try context.registration.installationContext(), token, userId)
    }

    /// An authorize URL with a fresh single-use `state`, for one of the configured redirect URIs (the first when
    /// none is given). Ensures the provider's OAuth client exists and knows every configured redirect URI.
    public func oauthAuthorizeURL(redirectURI: String? = nil) async throws -> OAuthAuthorization {
        let (installation, token, userId) = try await providerSession()
        let allowed = configuration.provider?.oauthRedirectURIs ?? []
        guard let redirect = redirectURI ?? allowed.first, allowed.contains(redirect) else {
            throw KeeperError(.invalidRedirectURI, "the redirect URI must be one of provider.oauth_redirect_uris")
        }
        let client = try await oauthClient(installation, token: token, userId: userId)
        let (url, state) = try self.client.authorizeURL(clientId: client.clientId, redirectURI: redirect)
        let expiresAt = Date().addingTimeInterval(OAuthStates.lifetime)
        try await store.saveOAuthState(state, redirectURI: redirect, expiresAt: expiresAt)
        return OAuthAuthorization(url: url, state: state, redirectURI: redirect, expiresAt: expiresAt)
    }

    /// The provider's OAuth client, made (or fetched) at bunq when this daemon does not know one with every
    /// configured redirect URI.
    private func oauthClient(_ installation: InstallationContext, token: String, userId: Int) async throws -> OAuthClientInfo {
        let allowed = configuration.provider?.oauthRedirectURIs ?? []
        if let known = await oauthStates.client, Set(allowed).isSubset(of: known.callbackURLs) { return known }
        let client: OAuthClientInfo
        do {
            client = try await self.client.ensureOAuthClient(installation, sessionToken: token, userId: userId, callbackURLs: allowed)
        } catch {
            throw KeeperError(.upstream, "setting up the OAuth client failed: \(error)")
        }
        await oauthStates.setClient(client)
        return client
    }

    /// Completes an authorization: checks the single-use `state`, exchanges the code, registers the user's own
    /// identity and brings it live. Returns its context name (`name`, else `user-<bunq user id>`).
    public func completeOAuth(code: String, state: String, name: String? = nil) async throws -> String {
        guard let redirect = try await store.takeOAuthState(state, now: Date()) else {
            throw KeeperError(.invalidOAuthState, "the OAuth state is unknown, already used, or older than 10 minutes")
        }
        if let name, !APIKeyIdentity.isValidName(name) || configuredNames.contains(name) {
            throw KeeperError(.unknownContext, "'\(name)' is not a usable context name")
        }
        // A state issued by another daemon (or before a restart): this one fetches the client from bunq.
        let (installation, token, userId) = try await providerSession()
        let oauthClient = try await self.oauthClient(installation, token: token, userId: userId)
        let accessToken: String
        do {
            accessToken = try await client.exchangeCode(code, redirectURI: redirect, client: oauthClient)
        } catch {
            throw KeeperError(.upstream, "the code exchange failed: \(error)")
        }
        // The code is spent: keep the access token durably at once, under a provisional name. Its first session
        // waits for the session-server budget like any new identity; if that fails, the provisional context keeps
        // retrying (a grant is never dropped) and goes live under its provisional name.
        let provisional = "oauth-pending-" + String(state.prefix(12))
        let registration = IdentityRegistration(kind: .oauthUser, secret: accessToken)
        try await registry.create(provisional, kind: .oauthUser, registration, schedule: false)
        let session: SessionInfo
        switch await registry.scheduleAwaitingFirstSession(provisional) {
        case .success(let opened): session = opened
        case .failure(let error):
            throw KeeperError(.upstream, "registering the user's identity failed: \(error.message)")
        }
        let finalName = name ?? "user-\(session.grantedByUserId ?? session.userId)"
        if await registry.record(finalName) != nil { try await removeContext(finalName, endSession: true) }
        guard let opened = try await store.context(provisional) else {
            throw KeeperError(.unknownContext, "the pending connection was removed")
        }
        let stored = SessionInfo(id: session.id, token: session.token, userId: session.userId,
                                 created: session.created, expiresAt: session.expiresAt)
        // The final context is stored before the provisional one goes: a crash in between keeps the grant.
        try await registry.createLive(finalName, kind: .oauthUser, opened.registration, session: stored)
        _ = try await registry.remove(provisional)
        logger.info("OAuth user connected", metadata: ["bunq.context": "\(finalName)"])
        return finalName
    }

    /// Forgets the context with its secrets, then (best effort) ends its session at bunq: its token stops being
    /// handed out before the session is ended.
    public func removeContext(_ name: String, endSession: Bool = true) async throws {
        guard let stored = try await registry.remove(name) else {
            throw KeeperError(.unknownContext, "no context named \(name)")
        }
        events.publish(.removed(context: name), nil)
        logger.notice("context removed", metadata: ["bunq.context": "\(name)"])
        if endSession { await self.endSession(of: stored) }
    }

    /// Ends a forgotten context's session at bunq, when it still had a live one; failures are logged only.
    func endSession(of context: StoredContext) async {
        guard let session = context.session, session.expiresAt > Date(),
              let installation = try? context.registration.installationContext() else { return }
        do {
            try await client.deleteSession(installation, sessionToken: session.token)
        } catch {
            logger.warning("could not end the session at bunq", metadata: ["bunq.context": "\(context.name)",
                                                                             "bunq.error": "\(error)"])
        }
    }

    var configuredNames: Set<String> {
        Set(configuration.apiKeys.map(\.name) + (configuration.provider == nil ? [] : ["provider"]))
    }
}
