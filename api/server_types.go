package api

// ServiceStatus answers GET /healthz and GET /readyz.
type ServiceStatus struct {
	Status string `json:"status"`
}
