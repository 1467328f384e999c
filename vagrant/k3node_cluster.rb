# What the Vagrantfile needs from cluster.yaml, read with Ruby's own YAML (Psych), without Vagrant.
#
# Invariants:
# - The machines are exactly the hosts of cluster.yaml, in its order, with its names, addresses and
#   roles: the Vagrantfile never invents or drops one, so `vagrant up` and `k3node up` see the same set.
# - A file this module cannot use is refused with an error naming the file and the field; it checks
#   only what the Vagrantfile relies on (`k3node validate` checks the rest).
# - Forgetting a host key rewrites the known_hosts file atomically (temp file, fsync, rename) and
#   keeps every other line as it was.
require "ipaddr"
require "yaml"

module K3nodeCluster
  # A cluster file the Vagrantfile cannot use; the message says which file and field, and what to do.
  class Error < StandardError; end

  Machine = Struct.new(:name, :address, :role, keyword_init: true)

  # VirtualBox's host-only networks may use 192.168.56.0/21 unless /etc/vbox/networks.conf allows more.
  HOST_ONLY_RANGE = IPAddr.new("192.168.56.0/21")
  ROLES = %w[server agent].freeze
  # Kubernetes node names (and VM host names): lowercase RFC 1123 labels.
  NAME = /\A[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\z/

  # The machines of the cluster file at `path`, in file order.
  def self.machines(path)
    doc = read_yaml(path)
    hosts = doc.dig("spec", "hosts") if doc.is_a?(Hash) && doc["spec"].is_a?(Hash)
    unless hosts.is_a?(Array) && !hosts.empty?
      raise Error, "#{path}: spec.hosts: a list of hosts is required (see README.md, \"cluster.yaml reference\")"
    end
    machines = hosts.each_with_index.map { |host, i| machine(path, host, i) }
    duplicates(path, machines, :name)
    duplicates(path, machines, :address)
    unless machines.any? { |m| m.role == "server" }
      raise Error, "#{path}: spec.hosts: no host has role server; k3s needs one to start the cluster"
    end
    machines
  end

  # spec.ssh.knownHosts as an absolute path, or nil when the file leaves it to the default.
  def self.known_hosts(path)
    doc = read_yaml(path)
    value = doc.dig("spec", "ssh", "knownHosts") if doc.is_a?(Hash) && doc.dig("spec", "ssh").is_a?(Hash)
    return nil unless value.is_a?(String) && !value.empty?
    return File.join(Dir.home, value[2..]) if value.start_with?("~/")
    File.expand_path(value, File.dirname(File.expand_path(path)))
  end

  # Removes the known_hosts lines of `address` (as OpenSSH and k3node write them: `address` on
  # port 22, `[address]:port` otherwise). Returns how many lines went; a missing file is nothing to do.
  def self.forget_host(known_hosts, address, port = 22)
    return 0 unless File.exist?(known_hosts)
    wanted = port == 22 ? address : "[#{address}]:#{port}"
    lines = File.readlines(known_hosts)
    kept = lines.reject do |line|
      fields = line.split
      # Markers (@cert-authority, @revoked) and hashed names (|1|...) are never k3node's.
      next false if fields.empty? || fields[0].start_with?("#", "@", "|")
      fields[0].split(",").include?(wanted)
    end
    removed = lines.size - kept.size
    write_atomically(known_hosts, kept.join) if removed.positive?
    removed
  end

  def self.read_yaml(path)
    YAML.safe_load(File.read(path), filename: path)
  rescue Errno::ENOENT
    raise Error, "#{path}: no such file; the Vagrantfile reads the machines from it " \
                 "(K3NODE_CLUSTER_FILE names another one)"
  rescue Psych::Exception => e
    raise Error, "#{path}: not valid YAML: #{e.message}"
  end

  def self.machine(path, host, index)
    field = "spec.hosts[#{index}]"
    raise Error, "#{path}: #{field}: a host is a mapping with name, address and role" unless host.is_a?(Hash)

    name = host["name"]
    unless name.is_a?(String) && NAME.match?(name)
      raise Error, "#{path}: #{field}.name: #{name.inspect} is not a lowercase host name (letters, digits, '-')"
    end
    role = host["role"]
    unless ROLES.include?(role)
      raise Error, "#{path}: #{field}.role: must be server or agent, found #{role.inspect}"
    end
    Machine.new(name: name, address: address(path, "#{field}.address", host["address"]), role: role)
  end

  def self.address(path, field, value)
    ip = IPAddr.new(value.to_s)
    unless ip.ipv4? && HOST_ONLY_RANGE.include?(ip)
      raise Error, "#{path}: #{field}: #{value} is outside VirtualBox's host-only range " \
                   "#{HOST_ONLY_RANGE}/21; use 192.168.56.10 and up"
    end
    value.to_s
  rescue IPAddr::InvalidAddressError
    raise Error, "#{path}: #{field}: #{value.inspect} is not an IP address; a VM needs a fixed one (192.168.56.x)"
  end

  def self.duplicates(path, machines, attribute)
    seen = machines.group_by(&attribute).select { |_, group| group.size > 1 }
    return if seen.empty?
    value, = seen.first
    raise Error, "#{path}: spec.hosts: #{attribute} #{value} is used by more than one host"
  end

  def self.write_atomically(path, text)
    mode = File.stat(path).mode & 0o7777
    tmp = "#{path}.k3node-tmp-#{Process.pid}"
    File.open(tmp, File::WRONLY | File::CREAT | File::TRUNC, mode) do |f|
      f.write(text)
      f.flush
      f.fsync
    end
    File.rename(tmp, path)
  ensure
    File.unlink(tmp) if tmp && File.exist?(tmp)
  end

  private_class_method :read_yaml, :machine, :address, :duplicates, :write_atomically
end
