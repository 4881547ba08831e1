package proxy

// What a Server holds against its resource bounds, for the tests of those
// bounds and the soak.

// BufferedBytes is the request body bytes held in memory.
func BufferedBytes(s *Server) int64 { return s.buffered.used.Load() }

// ClientConns is the client connections open.
func ClientConns(s *Server) int { return s.conns.count() }

// TunnelsOpen is the tunnels open, upgraded connections included.
func TunnelsOpen(s *Server) int64 { return s.tunnelsOpen() }

// InAdmission is the requests in admission, the waiting ones included.
func InAdmission(s *Server) int64 { return s.admitting.Load() }
