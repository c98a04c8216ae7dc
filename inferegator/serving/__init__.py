"""HTTP serving pieces shared by the gateway and the simulator."""
