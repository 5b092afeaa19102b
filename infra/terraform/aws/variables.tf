variable "name" {
  description = "Prefix of every resource's name (e.g. paddock-prod)."
  type        = string
  default     = "paddock"
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}

variable "vpc_id" {
  description = "The VPC Paddock runs in."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets (two or more AZs) for the API, the workers and Redis. They reach AWS APIs through NAT or VPC endpoints."
  type        = list(string)
}

variable "public_subnet_ids" {
  description = "Subnets of the API's load balancer (public for an internet-facing ALB, private for an internal one)."
  type        = list(string)
}

variable "internal_load_balancer" {
  description = "Whether the API's load balancer is internal (reached from the company network only)."
  type        = bool
  default     = true
}

variable "api_ingress_cidrs" {
  description = "Networks allowed to reach the API's load balancer on 443 (the internal portals, GitHub's webhook ranges if webhooks are used)."
  type        = list(string)
}

variable "certificate_arn" {
  description = "ACM certificate of the API's DNS name, for the load balancer's TLS listener."
  type        = string
}

variable "ami_id" {
  description = "Debian 12 AMI for API and worker instances (Debian's official images: owner 136693071363)."
  type        = string
}

variable "packages_bucket" {
  description = "Bucket, optionally with a prefix (bucket/prefix), holding the Debian packages `cargo xtask dist` built (paddock-api_<version>_amd64.deb, paddock-worker_<version>_amd64.deb), read by instances at boot."
  type        = string
}

variable "paddock_version" {
  description = "The packages' version."
  type        = string
}

variable "api_instance_type" {
  description = "API instance type (the API is stateless; two small instances take thousands of requests per second)."
  type        = string
  default     = "m7i.large"
}

variable "api_min_size" {
  description = "Fewest API instances."
  type        = number
  default     = 2
}

variable "api_max_size" {
  description = "Most API instances."
  type        = number
  default     = 6
}

variable "worker_instance_type" {
  description = "Worker instance type: each run's sandbox takes sandbox.memory_bytes and sandbox.nano_cpus (default 2 GiB, 1 CPU for the shipped agents)."
  type        = string
  default     = "m7i.2xlarge"
}

variable "worker_min_size" {
  description = "Fewest worker instances."
  type        = number
  default     = 1
}

variable "worker_max_size" {
  description = "Most worker instances."
  type        = number
  default     = 20
}

variable "worker_concurrency" {
  description = "Runs each worker instance takes at once (worker.concurrency); the scaling target."
  type        = number
  default     = 6
}

variable "worker_volume_gib" {
  description = "Root volume of a worker: Docker images, checkouts and sandboxes' writable layers."
  type        = number
  default     = 200
}

variable "gvisor" {
  description = "Install gVisor (runsc) on workers and run sandboxes under it (sandbox.runtime = runsc)."
  type        = bool
  default     = false
}

variable "redis_node_type" {
  description = "ElastiCache node type."
  type        = string
  default     = "cache.r7g.large"
}

variable "redis_replicas" {
  description = "Replicas beside the primary (at least 1: the audit durability mode `replica` waits for one)."
  type        = number
  default     = 1

  validation {
    condition     = var.redis_replicas >= 1
    error_message = "redis_replicas must be at least 1: Paddock's audit durability on ElastiCache waits for a replica."
  }
}

variable "bucket_name" {
  description = "Name of the evidence bucket (runs' artifacts, the audit trail, exports)."
  type        = string
}

variable "retention_days" {
  description = "Days each class of stored object is kept (Paddock's [retention]); lifecycle rules remove what the sweeper deleted once its lock has passed."
  type = object({
    artifacts        = number
    logs             = number
    transcripts      = number
    gateway_metadata = number
    audit            = number
    exports          = number
  })
  default = {
    artifacts        = 90
    logs             = 90
    transcripts      = 30
    gateway_metadata = 400
    audit            = 400
    exports          = 30
  }
}

variable "object_lock_default_days" {
  description = "Compliance-mode default retention of every object: nothing written can be deleted for this long. Audit objects get retention_days.audit on their own when written."
  type        = number
  default     = 1
}

variable "audit_prefix" {
  description = "audit.prefix: the audit trail's key prefix."
  type        = string
  default     = "audit/v1"
}

variable "export_prefix" {
  description = "audit.export_prefix: compliance exports' key prefix."
  type        = string
  default     = "audit-exports/v1"
}

variable "access_logs_bucket" {
  description = "Existing bucket that receives the load balancer's and the evidence bucket's access logs (your central log bucket)."
  type        = string
}

variable "egress_cidrs" {
  description = "Where instances may connect on 443 besides the VPC (GitHub, model providers, package mirrors): 0.0.0.0/0 behind a NAT, or your proxy's range."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "create_autoscaling_service_linked_role" {
  description = "Create AWSServiceRoleForAutoScaling (only in an account that has never had an Auto Scaling group: the key policy names it)."
  type        = bool
  default     = false
}
