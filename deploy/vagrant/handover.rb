# The Vagrant lab's hand-over from the master to the host, used by the Vagrantfile's triggers.
#
# master.sh leaves the join command and admin.conf in /vagrant/.kubelab inside the master. The
# Debian boxes sync /vagrant with rsync, host to guest only, so those files would never reach
# the host, nor through it the workers: after the master's `up`/`provision` they are read over
# Vagrant's own channel to the machine (as root: admin.conf is 0600) and written to the host's
# .kubelab/, which every later `vagrant up` of a worker syncs in. With a two-way synced folder
# (vboxsf, NFS) the same bytes are written again, harmlessly.
require "fileutils"

module KubelabHandover
  FILES = %w[join.sh admin.conf].freeze
  GUEST_DIR = "/vagrant/.kubelab".freeze

  # Copies the master's hand-over files into dir on the host; returns the names copied.
  # A file the master does not have (its provisioning failed) is left out, not emptied.
  def self.fetch(machine, dir)
    FileUtils.mkdir_p(dir)
    FILES.select do |name|
      out = +""
      status = machine.communicate.sudo("cat #{GUEST_DIR}/#{name}", error_check: false) do |type, data|
        out << data if type == :stdout
      end
      next false unless status.zero? && !out.empty?

      path = File.join(dir, name)
      File.write("#{path}.tmp", out, perm: 0o600)
      File.rename("#{path}.tmp", path)
      true
    end
  end

  # A destroyed master's join command must not reach the workers of the next one.
  def self.clear(dir)
    FILES.each { |name| FileUtils.rm_f(File.join(dir, name)) }
  end
end
