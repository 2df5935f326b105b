extension BunqClient {
    /// The provider's OAuth client, ready for use: an existing active client is reused (bunq allows one per user),
    /// else one is created; every callback URL in `callbackURLs` that is missing gets registered.
    public func ensureOAuthClient(_ installation: InstallationContext, sessionToken: String, userId: Int,
                                  callbackURLs: [String]) async throws -> OAuthClientInfo {
        let existing = try await listOAuthClients(installation, sessionToken: sessionToken, userId: userId)
        let clientId: Int
        if let active = existing.first(where: { $0.status == "ACTIVE" }) {
            clientId = active.id
        } else {
            clientId = try await createOAuthClient(installation, sessionToken: sessionToken, userId: userId)
        }
        var client = try await oauthClient(installation, sessionToken: sessionToken, userId: userId, clientId: clientId)
        let missing = callbackURLs.filter { !client.callbackURLs.contains($0) }
        for url in missing {
            try await addCallbackURL(installation, sessionToken: sessionToken, userId: userId, clientId: clientId, url: url)
        }
        if !missing.isEmpty {
            client = try await oauthClient(installation, sessionToken: sessionToken, userId: userId, clientId: clientId)
        }
        return client
    }
}
